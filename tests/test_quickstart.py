"""The quickstart: `bash scripts/quickstart.sh` runs from a fresh copy of the repository to a results table (the
untuned SmolLM2-135M-Instruct, ABBA and LoRA on ARC-Easy) and a loss curve; and the synthetic GSM8K-format word
problems of `python -m abba.synthetic` are correct arithmetic."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import io
from hashlib import sha256
from pathlib import Path

import pytest

from abba.loss_curves import read_losses
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


@pytest.mark.parametrize("argv, says", [(["n_tran=3"], "unknown option n_tran (did you mean: n_train)"),
                                        (["n_train=x"], "n_train=x: expected a whole number"),
                                        (["n_test=-1"], "n_train and n_test must be >= 0")])
def test_synthetic_bad_command_line_is_one_line_and_exit_2(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        synthetic_main([f"out_dir={tmp_path}", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert list(tmp_path.iterdir()) == []


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


#: The shrunken quickstart: 8 training records in 8 steps of 1 (the first at lr 0: warmup), 2 held-out records,
#: 4 test items. What it costs is mostly fixed: a dozen Python processes that import torch and load the model.
SHRUNK = {"QUICKSTART_TRAIN": "8", "QUICKSTART_BATCH": "1", "QUICKSTART_HELDOUT": "2", "QUICKSTART_ITEMS": "4"}
TIMEOUT_S = 870  # below pytest's --timeout=900, so the output tail is reported


def _run_quickstart(repo: Path, env: dict[str, str], log: Path) -> str:
    """bash scripts/quickstart.sh in its own process group (killed whole on a timeout or a failed test: no
    training run is left behind), output to `log`; returns the output."""
    with log.open("w") as f:
        proc = subprocess.Popen(["bash", "scripts/quickstart.sh"], cwd=repo, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, f"quickstart exited {proc.returncode} (-9: ran past {TIMEOUT_S} s):\n{output[-4000:]}"
    return output


def _table_rows(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header cells, {first cell: cells}) of the Markdown table in `markdown`."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
             if line.startswith("| ")]
    header = next(cells for cells in lines if cells[0] == "Method")
    return header, {cells[0]: cells for cells in lines if cells[0] != "Method"}


@pytest.mark.slow
def test_quickstart_from_a_fresh_copy(tmp_path):
    """The quickstart, shrunken by its knobs, from a clone-like copy: data copied from the local files (the copy's
    own excerpts in tests/data, never the Hub), the real model, ABBA and LoRA fine-tuned and evaluated beside the
    untuned base, the table and the plot."""
    repo = tmp_path / "repo"
    _fresh_copy(repo)
    assert not (repo / "outputs").exists() and not (repo / ".venv").exists()
    data = repo / "tests" / "data"  # a clone has them: 27 ARC-Easy test and 24 training records
    # Reuse this checkout's environment (scripts/setup_venv.sh keeps a .venv whose install stamp matches
    # pyproject.toml); a stale one would reinstall the clone into the shared .venv, so refuse instead.
    installed = (REPO_ROOT / "pyproject.toml").read_bytes() + (REPO_ROOT / "requirements-cpu.txt").read_bytes()
    stamp = REPO_ROOT / ".venv" / f".installed-{sha256(installed).hexdigest()[:16]}"  # as scripts/setup_venv.sh
    if not stamp.is_file():
        pytest.fail(f"{stamp} missing: run `bash scripts/test.sh` (it updates .venv) before this test")
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")

    # One intra-op thread (as tests/train_helpers.py): on busy cores OpenMP's spinning threads make every step of
    # the real model many times slower.
    env = {**os.environ, **SHRUNK, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ABBA_DATA_DIR": str(data)}
    env.pop("QUICKSTART_OUT", None)
    output = _run_quickstart(repo, env, tmp_path / "quickstart.log")
    out = repo / "outputs" / "quickstart"
    assert f"ARC-Easy train/test from local {data}" in output
    for rel in ("commonsense_train/ARC-Easy/train.json", "commonsense/ARC-Easy/test.json"):
        assert (out / "data" / rel).read_bytes() == (data / rel).read_bytes()

    header, rows = _table_rows((out / "results" / "tables" / "mini.md").read_text())
    acc, nll = header.index("ARC-e acc"), header.index("ARC-e NLL")
    labels = {"base": "Base (untuned)", "abba": "ABBA r=16", "lora": "LoRA r=16"}
    assert set(rows) == {*labels.values(), "Majority answer"}
    for cells in (rows[label] for label in labels.values()):
        assert 0.0 <= float(cells[acc]) <= 100.0 and float(cells[nll]) > 0.0 and cells[2] == "1", cells
    assert rows["ABBA r=16"][1] == rows["LoRA r=16"][1] == "4.88 M" and rows["Base (untuned)"][1] == "0"
    assert 0.0 < float(rows["Majority answer"][acc]) <= 100.0 and rows["Majority answer"][nll] == "–"

    metrics = {m: json.loads((out / "results" / f"m1_smollm2_{m}" / "seed0" / "metrics.json").read_text())["ARC-Easy"]
               for m in labels}
    assert {r["n"] for r in metrics.values()} == {4} and len({r["item_ids_sha256"] for r in metrics.values()}) == 1
    for method in ("abba", "lora"):  # the table's cells are these numbers
        assert float(rows[labels[method]][acc]) == pytest.approx(100 * metrics[method]["accuracy"], abs=0.005)
        assert float(rows[labels[method]][nll]) == pytest.approx(metrics[method]["nll"], abs=0.0005)
        info = json.loads((out / "results" / f"m1_smollm2_{method}" / "seed0" / "run_info.json").read_text())
        assert info["trainable_params"] == 4_884_480 and info["global_step"] == 8
        # a few steps at lr 1e-3 teach the answer format: the gold responses' NLL falls below the untuned model's
        assert metrics[method]["nll"] < metrics["base"]["nll"], (method, metrics)
    for png in (out / "loss_curve.png", out / "results" / "tables" / "mini.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for method in ("abba", "lora"):  # what the loss curve shows: every step's training loss
        (metrics_jsonl,) = (out / "runs" / f"m1_smollm2_{method}").rglob("metrics.jsonl")
        assert read_losses(metrics_jsonl)[0] == list(range(1, 9))
    assert "loss curve            : outputs/quickstart/loss_curve.png" in output
    assert re.search(r"== done in \d+ s\. Outputs:", output)
