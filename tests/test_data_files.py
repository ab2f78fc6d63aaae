"""The data the tests read. The excerpts in tests/data: the layout of ABBA_DATA_DIR, the digests and counts
excerpts.json records, small. The full files (../shared/data or $ABBA_DATA_DIR; skipped with one line when absent):
each passes abba.data.download's manifest checks, MATH's archive conversion reproduces the pinned file, and
tests/data/make_excerpts.py cuts exactly the committed excerpts from them. And the `shared_data` fixture itself:
a missing folder skips with the one line that says how to get the files, a complete one never skips, and a folder
that exists but lacks files fails the run (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DATA_SKIP, EXCERPTS, SHARED_DATA, full_files, missing_full_files

from abba.data import download
from eval.benchmarks import BENCHMARKS, load_items

REPO_ROOT = Path(__file__).resolve().parents[1]
INDEX = json.loads((EXCERPTS / "excerpts.json").read_text())
TESTS_GROUP = [f for f in download.MANIFEST if f.name in download.GROUPS["tests"]]


def test_excerpts_hold_every_file_in_the_layout_and_stay_small():
    assert sorted(INDEX) == sorted(full_files())
    total = 0
    for rel, entry in INDEX.items():
        data = (EXCERPTS / rel).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        text = data.decode("utf-8")
        records = [json.loads(line) for line in text.splitlines()] if rel.endswith(".jsonl") else json.loads(text)
        assert len(records) == entry["records"] == len(entry["positions"]) >= 24, rel
        assert entry["positions"] == sorted(set(entry["positions"])), rel
    assert total < 600_000  # well under 1 MB
    for name, bench in BENCHMARKS.items():  # every benchmark reads its excerpt through the evaluation's own loader
        assert len(load_items(bench, EXCERPTS)) == INDEX[bench.local_file]["records"], name
    levels = {(r["type"], r["level"]) for r in map(json.loads, (EXCERPTS / "math_eval/MATH_test.jsonl").open())}
    assert len(levels) == 35  # seven subjects, five levels each


def test_full_files_pass_the_manifest_checks(shared_data):
    """Record counts everywhere, size and sha256 where the manifest pins them (all but hellaswag, which
    ../shared/data rebuilt; its README's sha256 prefixes agree with the manifest's digests)."""
    failures = {f.path: download.check(f, shared_data / f.path) for f in TESTS_GROUP}
    assert {path: why for path, why in failures.items() if why} == {}


def test_math_archive_conversion_reproduces_the_pinned_file(shared_data, tmp_path):
    """The 5000 full records written back into MATH.tar's layout, converted: the manifest's digest."""
    from test_get_data import math_archive

    (tmp_path / "MATH.tar").write_bytes(math_archive(shared_data / "math_eval" / "MATH_test.jsonl"))
    entry = next(f for f in download.MANIFEST if f.name == "math")
    assert download.math_test_from_archive(tmp_path / "MATH.tar", tmp_path / "MATH_test.jsonl") == entry.records
    assert download.check(entry, tmp_path / "MATH_test.jsonl") is None


def test_make_excerpts_cuts_the_committed_excerpts_from_the_full_files(shared_data, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_excerpts", EXCERPTS / "make_excerpts.py")
    make_excerpts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_excerpts)
    index = make_excerpts.cut(shared_data, tmp_path)
    # A full file other than the one these were cut from (get_data.sh fetches LLM-Adapters' own hellaswag, not the
    # rebuilt one) gives other excerpts: compared only where the source is the same; hellaswag is the one allowed.
    other_source = {rel for rel in INDEX if index[rel]["source_sha256"] != INDEX[rel]["source_sha256"]}
    assert other_source <= {"commonsense/hellaswag/test.json"}
    for rel in INDEX.keys() - other_source:
        assert (tmp_path / rel).read_bytes() == (EXCERPTS / rel).read_bytes(), rel
        assert index[rel] == INDEX[rel], rel


def test_the_full_files_are_found(shared_data):
    """When present, the fixture gives the folder that holds every file (the subprocess runs below use it)."""
    assert shared_data == SHARED_DATA and missing_full_files(shared_data) == []


def _pytest(data_dir: Path, *tests: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ABBA_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *(f"tests/test_data_files.py::{t}" for t in tests)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_shared_data_fixture_skips_only_when_the_folder_is_missing(tmp_path):
    """Missing folder: skipped, with the one line saying how to get the files, and the run passes. All files
    there: nothing skips. The folder there but a file missing: the run fails, naming what is missing."""
    absent = tmp_path / "absent"
    proc = _pytest(absent, "test_the_full_files_are_found")
    reason = f"{DATA_SKIP} {absent}: run `bash scripts/get_data.sh` or set ABBA_DATA_DIR"
    assert proc.returncode == 0 and "1 skipped" in proc.stdout and reason in proc.stdout, proc.stdout[-3000:]

    complete = tmp_path / "complete"  # the excerpts stand in for the full files: only their presence counts here
    for rel in full_files():
        (complete / rel).parent.mkdir(parents=True, exist_ok=True)
        (complete / rel).symlink_to(EXCERPTS / rel)
    proc = _pytest(complete, "test_the_full_files_are_found")
    assert proc.returncode == 0 and "1 passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]

    (complete / "commonsense" / "piqa" / "test.json").unlink()
    proc = _pytest(complete, "test_the_full_files_are_found")
    assert proc.returncode == 1 and "1 skipped" in proc.stdout, proc.stdout[-3000:]
    assert f"error: 1 test(s) skipped for missing data although {complete} exists" in proc.stdout
    assert "commonsense/piqa/test.json missing there" in proc.stdout
