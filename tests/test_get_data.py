"""abba.data.download (scripts/get_data.sh) against a stand-in source served here: an HTTP server on 127.0.0.1
with Range support, holding the excerpts of tests/data laid out as a mirror (MATH as the archive MATH.tar), and
faults to order (an HTTP error, a connection cut midway, corrupted bytes, a server that ignores Range). The real
command runs against it with a manifest whose sizes and digests are the excerpts'. No network."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import EXCERPTS, full_files

from abba.data import download

REPO_ROOT = Path(__file__).resolve().parents[1]
INDEX = json.loads((EXCERPTS / "excerpts.json").read_text())


def math_archive(jsonl: Path) -> bytes:
    """MATH.tar as Hendrycks et al. lay it out (MATH/test/<subject>/<n>.json, one problem per file) holding the
    records of a MATH_test.jsonl, plus a training problem and a macOS resource file the conversion must skip."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("MATH/train/algebra/1.json", json.dumps({"problem": "train", "level": "Level 1", "type": "Algebra",
                                                     "solution": "$\\boxed{1}$"}).encode())
        add("MATH/test/algebra/._1.json", b"\x00\x05\x16\x07")
        for line in reversed(jsonl.read_text(encoding="utf-8").splitlines()):  # any order: the result is sorted
            record = json.loads(line)
            body = {k: record[k] for k in ("problem", "level", "type", "solution")}
            add("MATH/" + record["unique_id"], json.dumps(body, indent=4).encode())
    return buf.getvalue()


class StandIn:
    """A mirror of the excerpts on 127.0.0.1. `fail[path] = status` answers with that error; `drop[path] = n`
    sends the headers of the whole file, n bytes, then closes (once); `corrupt` flips a byte of those files;
    `ignore_range` answers every request with the whole file. `requests` lists (path, Range header)."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        self.fail: dict[str, int] = {}
        self.drop: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.ignore_range = False
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = unquote(self.path.lstrip("/"))
                stand_in.requests.append((path, self.headers.get("Range")))
                file = stand_in.root / path
                if path in stand_in.fail or not file.is_file():
                    self.send_error(stand_in.fail.get(path, 404))
                    return
                data = bytearray(file.read_bytes())
                if path in stand_in.corrupt:
                    data[len(data) // 2] ^= 0x20
                start, wanted = 0, self.headers.get("Range")
                if wanted and not stand_in.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = bytes(data[start:])
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = stand_in.drop.pop(path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.close_connection = cut is not None

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def asked_for(self, path: str) -> list:
        return [r for p, r in self.requests if p == path]


def excerpt_manifest() -> tuple[download.DataFile, ...]:
    """The real manifest's entries for the files tests/data holds, with the excerpts' size, digest and count."""
    return tuple(replace(f, size=(EXCERPTS / f.path).stat().st_size, sha256=INDEX[f.path]["sha256"],
                         records=INDEX[f.path]["records"]) for f in download.MANIFEST if f.path in INDEX)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    for rel in INDEX:
        if rel != "math_eval/MATH_test.jsonl":  # the mirror has the archive, as the public source does
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((EXCERPTS / rel).read_bytes())
    (root / "MATH.tar").write_bytes(math_archive(EXCERPTS / "math_eval" / "MATH_test.jsonl"))
    monkeypatch.setattr(download, "MANIFEST", excerpt_manifest())
    server = StandIn(root)
    yield server
    server.close()


def get(capsys, *args: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of `python -m abba.data.download ARGS`, run in this process."""
    try:
        code = download.main(list(args))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_is_the_excerpt(data: Path, rel: str) -> None:
    got = (data / rel).read_bytes()
    assert got == (EXCERPTS / rel).read_bytes() and hashlib.sha256(got).hexdigest() == INDEX[rel]["sha256"], rel


def test_every_file_lands_in_the_layout_and_passes_its_checks(stand_in, tmp_path, capsys):
    data = tmp_path / "data"
    code, out, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 0 and err == [], err
    for rel in INDEX:
        assert_is_the_excerpt(data, rel)
    # This mirror has no converted MATH file (asked for first, 404), so MATH came as the archive and was
    # converted; nothing but the data files is left behind
    assert stand_in.asked_for("MATH.tar") == [None] and stand_in.asked_for("math_eval/MATH_test.jsonl") == [None]
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()) == sorted(INDEX)
    assert f"{len(INDEX)} downloaded, 0 already there, 0 failed" in out
    assert len([line for line in out.splitlines() if line.startswith("  downloaded ")]) == len(INDEX)

    asked = len(stand_in.requests)
    code, out, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")  # all there and verified
    assert code == 0 and err == [] and len(stand_in.requests) == asked
    assert f"0 downloaded, {len(INDEX)} already there, 0 failed" in out

    code, out, _ = get(capsys, f"data_dir={tmp_path / 'cs'}", f"source={stand_in.url}", "only=commonsense,gsm8k")
    assert code == 0 and sorted(str(p.relative_to(tmp_path / "cs")) for p in (tmp_path / "cs").rglob("*.json*")) == \
        sorted(["math_eval/gsm8k_test.jsonl", *(f"commonsense/{n}/test.json" for n in download.GROUPS["commonsense"])])


def test_a_cut_connection_keeps_the_part_and_the_next_run_resumes_it_with_a_range_request(stand_in, tmp_path,
                                                                                         capsys):
    rel = "commonsense/hellaswag/test.json"
    stand_in.drop[rel] = 5000
    data = tmp_path / "data"
    code, _, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {rel}: the download stopped after 5,000 of ") and \
        err[0].endswith("run the same command again to resume from test.json.part"), err[0]
    part = data / (rel + ".part")
    assert part.read_bytes() == (EXCERPTS / rel).read_bytes()[:5000] and not (data / rel).exists()
    for other in INDEX.keys() - {rel}:  # one failure stops nothing else
        assert_is_the_excerpt(data, other)

    code, out, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 0 and err == [], err
    assert stand_in.asked_for(rel) == [None, "bytes=5000-"]  # resumed where the first run stopped
    assert_is_the_excerpt(data, rel)
    assert not part.exists() and "1 downloaded, 14 already there, 0 failed" in out


def test_a_server_that_ignores_range_restarts_the_part(stand_in, tmp_path, capsys):
    rel = "commonsense/openbookqa/test.json"
    data = tmp_path / "data"
    (data / rel).parent.mkdir(parents=True)
    (data / (rel + ".part")).write_bytes(b"x" * 100)  # left by an earlier run
    stand_in.ignore_range = True
    code, _, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}", "only=openbookqa")
    assert code == 0 and err == [] and stand_in.asked_for(rel) == ["bytes=100-"]
    assert_is_the_excerpt(data, rel)


@pytest.mark.parametrize("status", [404, 500])
def test_an_http_error_is_one_line_and_the_other_files_still_come(stand_in, tmp_path, capsys, status):
    rel = "commonsense/piqa/test.json"
    stand_in.fail[rel] = status
    data = tmp_path / "data"
    code, out, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 1 and len(err) == 1, err
    assert re.fullmatch(rf"error: {rel}: HTTP {status} [\w ]+ from {stand_in.url}/{rel}: check the address, or pass "
                        r"source=MIRROR", err[0]), err[0]
    assert not (data / rel).exists() and not (data / (rel + ".part")).exists()
    assert f"  FAILED     {rel}" in out and f"{len(INDEX) - 1} downloaded, 0 already there, 1 failed" in out
    for other in INDEX.keys() - {rel}:
        assert_is_the_excerpt(data, other)


def test_an_unreachable_source_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "MANIFEST", excerpt_manifest())
    code, _, err = get(capsys, f"data_dir={tmp_path / 'data'}", "source=http://127.0.0.1:9", "only=boolq,math")
    boolq = [line for line in err if line.startswith("error: commonsense/boolq/test.json: ")]
    assert code == 1 and len(err) == 2 and boolq[0].startswith(
        "error: commonsense/boolq/test.json: cannot reach http://127.0.0.1:9/commonsense/boolq/test.json ("), err
    # Nothing arrived, so nothing was created: an empty data folder would make the test suite expect its files.
    assert not (tmp_path / "data").exists()


def test_a_mirror_of_a_data_folder_supplies_math_as_converted(tmp_path, capsys, monkeypatch):
    """Another machine's data folder (what `source=` is documented to serve) has MATH_test.jsonl, not MATH.tar."""
    monkeypatch.setattr(download, "MANIFEST", excerpt_manifest())
    code, out, err = get(capsys, f"data_dir={tmp_path / 'data'}", f"source={EXCERPTS.as_uri()}", "only=math")
    assert code == 0 and err == [], err
    assert_is_the_excerpt(tmp_path / "data", "math_eval/MATH_test.jsonl")


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code, _, err = get(capsys, f"data_dir={tmp_path / 'afile'}", "only=boolq")
    assert code == 2 and len(err) == 1 and "data_dir=" in err[0] and "is a file" in err[0], err


def test_help_prints_the_usage_and_exits_0(capsys):
    code, out, err = get(capsys, "--help")
    assert code == 0 and err == [] and "python -m abba.data.download" in out


def test_a_corrupted_file_is_deleted_and_reported_and_a_damaged_local_file_is_replaced(stand_in, tmp_path, capsys):
    rel = "commonsense/boolq/test.json"
    stand_in.corrupt.add(rel)
    data = tmp_path / "data"
    code, _, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 1 and len(err) == 1, err
    expected = INDEX[rel]["sha256"][:16]
    assert err[0].startswith(f"error: {rel}: the downloaded file has sha256 ") and \
        f"is not the expected {expected}…: deleted; run the same command again" in err[0], err[0]
    assert not (data / rel).exists() and not (data / (rel + ".part")).exists()

    stand_in.corrupt.clear()
    damaged = "commonsense/winogrande/test.json"
    (data / damaged).write_text("[]")
    code, out, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}")
    assert code == 0 and err == [], err
    assert f"  {damaged}: present but 2 bytes, expected {(EXCERPTS / damaged).stat().st_size:,}: " \
           "downloading it again" in out
    assert_is_the_excerpt(data, rel)
    assert_is_the_excerpt(data, damaged)


def test_an_archive_that_is_not_math_is_reported(stand_in, tmp_path, capsys):
    (stand_in.root / "MATH.tar").write_bytes(b"<html>moved</html>")
    data = tmp_path / "data"
    code, _, err = get(capsys, f"data_dir={data}", f"source={stand_in.url}", "only=math")
    assert code == 1 and len(err) == 1 and err[0].startswith("error: math_eval/MATH_test.jsonl: MATH.tar from "), err
    assert "is not the MATH archive" in err[0] and not list(data.rglob("*.*"))


def test_math_conversion_keeps_the_test_split_sorted_by_subject_and_number(tmp_path):
    lines = [{"unique_id": f"test/{s}/{n}.json", "problem": f"p{s}{n} ≤ 2", "level": "Level 2", "type": s.title(),
              "solution": f"$\\boxed{{{n}}}$"} for s, n in (("algebra", 2), ("algebra", 10), ("geometry", 1))]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "MATH.tar").write_bytes(math_archive(source))
    assert download.math_test_from_archive(tmp_path / "MATH.tar", tmp_path / "out.jsonl") == 3
    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert text == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)  # 2 before 10; "≤" kept


@pytest.mark.parametrize("args, says", [
    (["only=hellaswagg"], "only=hellaswagg: no such file or group (did you mean: hellaswag)"),
    (["data-dir=/x"], "unknown option data-dir (did you mean: data_dir)"),
    (["source=ftp://host/x"], "source=ftp://host/x: expected an http://, https:// or file:// address"),
    (["tests"], "tests: expected key=value"),
    (["only="], "only= is empty"),  # not "everything": an empty value is a mistake, not a default
])
def test_a_bad_command_line_is_one_line_and_exit_2(args, says, tmp_path, capsys):
    code, out, err = get(capsys, f"data_dir={tmp_path / 'data'}", *args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "data").exists()


def test_the_wrapper_script_runs_the_command(tmp_path):
    """scripts/get_data.sh runs abba.data.download in .venv with the same arguments (scripts/setup_venv.sh)."""
    installed = (REPO_ROOT / "pyproject.toml").read_bytes() + (REPO_ROOT / "requirements-cpu.txt").read_bytes()
    stamp = REPO_ROOT / ".venv" / f".installed-{hashlib.sha256(installed).hexdigest()[:16]}"  # as setup_venv.sh
    if not stamp.is_file():  # setup_venv.sh would install from the network
        pytest.fail(f"{stamp} missing: run `bash scripts/test.sh` (it updates .venv) before this test")
    proc = subprocess.run(["bash", "scripts/get_data.sh", f"data_dir={tmp_path / 'data'}", "only=mathh"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: only=mathh: no such file or group (did you mean: "
                                                           "math")
    assert not (tmp_path / "data").exists()
    # A relative data_dir= is the caller's folder, not the repository's (the script cd's to the repository).
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "get_data.sh"), "data_dir=rel", "only=boolq",
                           "source=http://127.0.0.1:9"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"-> {tmp_path / 'rel'}" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_the_manifest_puts_each_file_where_the_code_reads_it():
    """Every benchmark's local file, every local training file of configs/data, ARC-Easy for the quickstart and
    the files the tests read are in the manifest, at the same paths; the groups name only manifest entries."""
    import yaml

    from abba.data.hub_commonsense import FILES
    from eval.benchmarks import BENCHMARKS

    paths = {f.path for f in download.MANIFEST}
    assert {b.local_file for b in BENCHMARKS.values()} <= paths
    assert set(FILES.values()) <= paths
    for config in sorted((REPO_ROOT / "configs" / "data").glob("*.yaml")):
        data_paths = yaml.safe_load(config.read_text())["path"]
        for path in [data_paths] if isinstance(data_paths, str) else data_paths or []:
            assert path.startswith("${paths.data_dir}/") and path.split("/", 1)[1] in paths, (config.name, path)
    assert set(full_files()) == set(INDEX) and len(full_files()) == 15  # tests read what the excerpts hold
    names = {f.name for f in download.MANIFEST}
    assert len(names) == len(download.MANIFEST) and all(set(g) <= names for g in download.GROUPS.values())
    assert set(download.GROUPS["all"]) == names
