"""The quickstart: the synthetic word problems it trains on are correct GSM8K-format arithmetic, and
`bash scripts/quickstart.sh` runs from a fresh copy of the repository to a results table and a loss curve."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import tarfile
import io
from hashlib import sha256
from pathlib import Path

import pytest

from abba.synthetic import generate, main as synthetic_main

REPO_ROOT = Path(__file__).resolve().parents[1]
ANNOTATION = re.compile(r"<<([\d+\-*/ ]+)=(\d+)>>(\d+)")


def test_synthetic_problems_are_correct_and_splits_disjoint(tmp_path):
    train, test = generate(300, 50, seed=3)
    assert (len(train), len(test)) == (300, 50)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for record in train + test:
        steps, final = record["answer"].rsplit("\n#### ", 1)
        results = []
        for expr, claimed, shown in ANNOTATION.findall(steps):
            a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", expr.replace(" ", "")).groups()
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert int(claimed) == int(shown) == value, record
            results.append(value)
        assert results and int(final) == results[-1] >= 0, record  # the last step is the answer
    assert generate(300, 50, seed=3) == (train, test)
    assert generate(300, 50, seed=4) != (train, test)


def test_synthetic_files_read_by_the_gsm8k_scorer(tmp_path):
    from eval.scoring.gsm8k import gold_answer

    synthetic_main([f"out_dir={tmp_path}", "n_train=20", "n_test=5", "seed=0"])
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) == {"question", "answer"} for r in rows)
    assert [gold_answer(r["answer"]) for r in rows] == [r["answer"].rsplit("#### ", 1)[1] for r in rows]
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 20


def _fresh_copy(dest: Path) -> None:
    """What a clone of this repository holds: tracked and untracked-but-not-ignored files (no .venv, outputs/,
    results' merged models). Unlike `git clone` it includes work not committed yet."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in filter(None, names):
            if (REPO_ROOT / name).is_file():
                tar.add(REPO_ROOT / name, arcname=name)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dest, filter="data")


@pytest.mark.slow
def test_quickstart_from_a_fresh_copy(tmp_path):
    repo = tmp_path / "repo"
    _fresh_copy(repo)
    assert not (repo / "outputs").exists() and not (repo / ".venv").exists()
    (tmp_path / "shared").symlink_to(REPO_ROOT.parent / "shared")
    # Reuse this checkout's environment (scripts/setup_venv.sh keeps a .venv whose install stamp matches
    # pyproject.toml); a stale one would reinstall the clone into the shared .venv, so refuse instead.
    stamp = REPO_ROOT / ".venv" / f".installed-{sha256((REPO_ROOT / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    if not stamp.is_file():
        pytest.fail(f"{stamp} missing: run `bash scripts/test.sh` (it updates .venv) before this test")
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")

    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=repo, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = repo / "outputs" / "quickstart"

    table = (out / "tables" / "other.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Method")}
    assert set(rows) == {"ABBA r=8", "LoRA r=8"}
    for cells in rows.values():  # method, params, seeds, GSM8K accuracy (%) on the held-out split
        assert cells[1] == "16.38 K" and cells[2] == "1" and 0.0 <= float(cells[3]) <= 100.0
    stats = {r["method"]: r for r in csv.DictReader((out / "tables" / "other.csv").open())}
    assert set(stats) == {"abba_r8", "lora_r8"} and all(r["benchmark"] == "gsm8k" for r in stats.values())
    for method in ("abba", "lora"):
        metrics = json.loads((out / "results" / f"quickstart_{method}" / "seed0" / "metrics.json").read_text())
        assert metrics["gsm8k"]["n"] == 100 and metrics["gsm8k"]["backend"] == "hf"
        assert float(stats[f"{method}_r8"]["mean"]) == pytest.approx(100 * metrics["gsm8k"]["accuracy"], abs=1e-3)
        losses = [json.loads(line)["loss"] for line in
                  (out / "runs" / f"quickstart_{method}" / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert len(losses) == 20 and losses[-1] < losses[0]  # 80 steps logged every 4; it learned something
    for png in (out / "loss_curve.png", out / "reconstruction" / "reconstruction.png", out / "tables" / "other.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "loss curve            : outputs/quickstart/loss_curve.png" in proc.stdout
