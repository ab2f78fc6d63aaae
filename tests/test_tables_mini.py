"""abba.tables, `tables=mini`: the mini reproduction table (accuracy and held-out NLL per benchmark, the untuned
base, the majority-answer row) rebuilt from synthetic results folders; every Markdown and CSV cell is checked
against means, sample stds and majority rates worked out by hand below."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from abba.tables import build_tables, mini_order

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")

# Gold answers of the evaluated items (the same items in every run). Majority rates by hand:
# boolq 3/5 = 60 %, ARC-e 2/4 = 50 %, ARC-c 3/8 = 37.5 %, OBQA 2/6 = 33.33 %; their mean 180.8333/4 = 45.2083 %.
GOLDS = {
    "boolq": ["true", "true", "false", "true", "false"],
    "ARC-Easy": ["answer1", "answer2", "answer1", "answer3"],
    "ARC-Challenge": ["answer1", "answer2", "answer2", "answer3", "answer4", "answer2", "answer1", "answer4"],
    "openbookqa": ["answer1", "answer2", "answer3", "answer4", "answer4", "answer1"],
}
# Another run that saw other ARC-c golds (5 of 8 are answer2: 62.5 %), to be warned about and not used.
OTHER_ARC_C = ["answer2", "answer2", "answer2", "answer3", "answer4", "answer2", "answer1", "answer2"]


def write_mini_run(root: Path, method: str, seed: int, peft: dict, results: dict[str, tuple[float, float]],
                   trainable: int, golds: dict[str, list[str]], trained: bool = True) -> Path:
    """results/mini/m1_smollm2_<method>/seed<k>/ as eval.run + merge_eval leave it: metrics.json with accuracy
    and nll per benchmark, config.yaml, run_info.json and samples_<benchmark>.jsonl."""
    out = root / f"m1_smollm2_{method}" / f"seed{seed}"
    out.mkdir(parents=True)
    metrics = {}
    for bench, (accuracy, nll) in results.items():
        n = len(golds[bench])
        metrics[bench] = {"benchmark": bench, "accuracy": accuracy, "n": n, "n_invalid": 0, "backend": "hf",
                          "nll": nll, "nll_items": n, "nll_tokens": 3 * n, "nll_truncated": 0,
                          "git_commit": "fedcba9876543210"}
        with (out / f"samples_{bench}.jsonl").open("w") as f:
            for i, gold in enumerate(golds[bench]):
                f.write(json.dumps({"id": f"{bench}/{i}", "prompt": "q", "completion": "c", "prediction": gold,
                                    "gold": gold, "correct": True}) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics))
    cfg = {"experiment_name": f"m1_smollm2_{method}", "seed": seed, "table": "mini",
           "model": {"name": "smollm2_135m", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "peft": peft,
           "data": {"name": "commonsense_local", "task": "commonsense"},
           "trainer": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "keep_global_batch": True}}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    info = {"git_commit": "0123456789abcdef", "trainable_params": trainable, "seed": seed, "world_size": 1,
            "hardware": {"cuda": False, "cpu_count": 2}, "experiment_name": f"m1_smollm2_{method}"}
    if trained:
        info.update(n_train_examples=480, global_step=60, finished=True)
    (out / "run_info.json").write_text(json.dumps(info))
    return out


@pytest.fixture()
def mini_results(tmp_path):
    """ABBA (r1 = r2 = 8) and LoRA r=16 x 2 seeds, the untuned base x 1 seed; LoRA seed 1 has no OBQA."""
    root = tmp_path / "results" / "mini"
    abba, lora = {"method": "abba", "r1": 8, "r2": 8, "alpha": 16}, {"method": "lora", "r": 16, "alpha": 32}
    write_mini_run(root, "abba", 0, abba, {"boolq": (0.60, 1.0), "ARC-Easy": (0.50, 1.2), "ARC-Challenge": (0.40, 1.4),
                                           "openbookqa": (0.30, 1.6)}, 1234567, GOLDS)
    write_mini_run(root, "abba", 1, abba, {"boolq": (0.62, 0.9), "ARC-Easy": (0.54, 1.2), "ARC-Challenge": (0.40, 1.3),
                                           "openbookqa": (0.36, 1.4)}, 1234567, GOLDS)
    write_mini_run(root, "lora", 0, lora, {"boolq": (0.56, 1.1), "ARC-Easy": (0.50, 1.3), "ARC-Challenge": (0.38, 1.5),
                                           "openbookqa": (0.32, 1.7)}, 1234567, GOLDS)
    write_mini_run(root, "lora", 1, lora, {"boolq": (0.58, 1.0), "ARC-Easy": (0.48, 1.2), "ARC-Challenge": (0.42, 1.4)},
                   1234567, {**GOLDS, "ARC-Challenge": OTHER_ARC_C})
    write_mini_run(root, "base", 0, {"method": "base"}, {"boolq": (0.50, 2.0), "ARC-Easy": (0.40, 2.2),
                                                         "ARC-Challenge": (0.30, 2.4), "openbookqa": (0.20, 2.6)},
                   0, GOLDS, trained=False)
    return root


def markdown_rows(text: str) -> tuple[str, dict[str, list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return lines[0], rows


S1, S2, S3 = 1 / math.sqrt(2), 2 / math.sqrt(2), 3 / math.sqrt(2)  # sample std of two seeds 1, 2, 3 apart


def test_mini_every_markdown_and_csv_cell(mini_results, tmp_path, caplog):
    out = tmp_path / "tables"
    with caplog.at_level(logging.WARNING, logger="abba.tables"):
        written = build_tables(mini_results, out, plots=False, tables=("mini",))
    assert set(written) == {"mini"}
    # The LoRA seed-1 ARC-c samples have other golds: a warning naming that file, and the first run's items used.
    warnings = [r.getMessage() for r in caplog.records if "majority answer" in r.getMessage()]
    assert len(warnings) == 1 and "ARC-Challenge" in warnings[0]
    assert str(mini_results / "m1_smollm2_lora" / "seed1" / "samples_ARC-Challenge.jsonl") in warnings[0]

    md = (out / "mini.md").read_text()
    header, rows = markdown_rows(md)
    assert header == ("| Method | Params | Seeds | BoolQ acc | BoolQ NLL | ARC-e acc | ARC-e NLL | ARC-c acc | ARC-c NLL "
                      "| OBQA acc | OBQA NLL | Avg acc | Avg NLL |")
    # By hand. ABBA accuracies (60, 62), (50, 54), (40, 40), (30, 36); per-seed Avg 45, 48.
    #          ABBA NLLs (1.0, 0.9), (1.2, 1.2), (1.4, 1.3), (1.6, 1.4); per-seed Avg 1.3, 1.2.
    # LoRA accuracies (56, 58), (50, 48), (38, 42), (32, -); Avg only seed 0 (seed 1 has no OBQA): 44.
    #          LoRA NLLs (1.1, 1.0), (1.3, 1.2), (1.5, 1.4), (1.7, -); Avg seed 0: 1.4.
    # Base: 50, 40, 30, 20 (Avg 35); NLL 2.0, 2.2, 2.4, 2.6 (Avg 2.3); one seed, so no std.
    assert rows == {
        "Base (untuned)": ["0", "1", "50.00", "2.000", "40.00", "2.200", "30.00", "2.400", "20.00", "2.600",
                           "35.00", "2.300"],
        "ABBA r=16": ["1.23 M", "2", "61.00 ± 1.41", "0.950 ± 0.071", "52.00 ± 2.83", "1.200 ± 0.000",
                      "40.00 ± 0.00", "1.350 ± 0.071", "33.00 ± 4.24", "1.500 ± 0.141", "46.50 ± 2.12",
                      "1.250 ± 0.071"],
        "LoRA r=16": ["1.23 M", "2", "57.00 ± 1.41", "1.050 ± 0.071", "49.00 ± 1.41", "1.250 ± 0.071",
                      "40.00 ± 2.83", "1.450 ± 0.071", "32.00", "1.700", "44.00", "1.400"],
        "Majority answer": ["–", "–", "60.00", "–", "50.00", "–", "37.50", "–", "33.33", "–", "45.21", "–"],
    }
    assert list(rows) == ["Base (untuned)", "ABBA r=16", "LoRA r=16", "Majority answer"]  # Base, ABBA, baselines
    assert ("Model: SmolLM2-135M-Instruct (`smollm2_135m`). Tuned runs: 480 training examples (commonsense_local), "
            "60 optimizer steps of 8 sequences. Evaluated items: BoolQ 5, ARC-e 4, ARC-c 8, OBQA 6.") in md
    assert "5 evaluated runs; commits: 0123456789; hardware: CPU (2 cores)." in md
    assert "### SmolLM2-135M-Instruct" in md and "Note: 1 run(s) evaluated other ARC-c items" in md

    got = {(r["method"], r["benchmark"], r["metric"]): r for r in csv.DictReader((out / "mini.csv").open())}
    assert len(got) == 3 * 5 * 2 + 5  # methods x (benchmarks + avg) x metrics, + the majority row
    hand = {  # (n_seeds, mean, std, params)
        ("base", "boolq", "accuracy"): (1, 50.0, None, 0), ("base", "boolq", "nll"): (1, 2.0, None, 0),
        ("base", "ARC-Easy", "accuracy"): (1, 40.0, None, 0), ("base", "ARC-Easy", "nll"): (1, 2.2, None, 0),
        ("base", "ARC-Challenge", "accuracy"): (1, 30.0, None, 0), ("base", "ARC-Challenge", "nll"): (1, 2.4, None, 0),
        ("base", "openbookqa", "accuracy"): (1, 20.0, None, 0), ("base", "openbookqa", "nll"): (1, 2.6, None, 0),
        ("base", "avg", "accuracy"): (1, 35.0, None, 0), ("base", "avg", "nll"): (1, 2.3, None, 0),
        ("abba_r16", "boolq", "accuracy"): (2, 61.0, S2, 1234567), ("abba_r16", "boolq", "nll"): (2, 0.95, 0.1 * S1, 1234567),
        ("abba_r16", "ARC-Easy", "accuracy"): (2, 52.0, 4 / math.sqrt(2), 1234567),
        ("abba_r16", "ARC-Easy", "nll"): (2, 1.2, 0.0, 1234567),
        ("abba_r16", "ARC-Challenge", "accuracy"): (2, 40.0, 0.0, 1234567),
        ("abba_r16", "ARC-Challenge", "nll"): (2, 1.35, 0.1 * S1, 1234567),
        ("abba_r16", "openbookqa", "accuracy"): (2, 33.0, 6 / math.sqrt(2), 1234567),
        ("abba_r16", "openbookqa", "nll"): (2, 1.5, 0.2 * S1, 1234567),
        ("abba_r16", "avg", "accuracy"): (2, 46.5, S3, 1234567), ("abba_r16", "avg", "nll"): (2, 1.25, 0.1 * S1, 1234567),
        ("lora_r16", "boolq", "accuracy"): (2, 57.0, S2, 1234567), ("lora_r16", "boolq", "nll"): (2, 1.05, 0.1 * S1, 1234567),
        ("lora_r16", "ARC-Easy", "accuracy"): (2, 49.0, S2, 1234567), ("lora_r16", "ARC-Easy", "nll"): (2, 1.25, 0.1 * S1, 1234567),
        ("lora_r16", "ARC-Challenge", "accuracy"): (2, 40.0, 4 / math.sqrt(2), 1234567),
        ("lora_r16", "ARC-Challenge", "nll"): (2, 1.45, 0.1 * S1, 1234567),
        ("lora_r16", "openbookqa", "accuracy"): (1, 32.0, None, 1234567), ("lora_r16", "openbookqa", "nll"): (1, 1.7, None, 1234567),
        ("lora_r16", "avg", "accuracy"): (1, 44.0, None, 1234567), ("lora_r16", "avg", "nll"): (1, 1.4, None, 1234567),
        ("majority", "boolq", "accuracy"): (None, 60.0, None, None),
        ("majority", "ARC-Easy", "accuracy"): (None, 50.0, None, None),
        ("majority", "ARC-Challenge", "accuracy"): (None, 37.5, None, None),
        ("majority", "openbookqa", "accuracy"): (None, 100 / 3, None, None),
        ("majority", "avg", "accuracy"): (None, (60 + 50 + 37.5 + 100 / 3) / 4, None, None),
    }
    assert set(got) == set(hand)
    labels = {"base": "Base (untuned)", "abba_r16": "ABBA r=16", "lora_r16": "LoRA r=16", "majority": "Majority answer"}
    for key, (n, mean, std, params) in hand.items():
        row = got[key]
        assert (row["table"], row["model"], row["method_label"]) == ("mini", "smollm2_135m", labels[key[0]]), key
        assert row["n_seeds"] == ("" if n is None else str(n)), key
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-4), key
        if std is None:
            assert row["std"] == "", key  # one seed: no std, never 0
        else:
            assert float(row["std"]) == pytest.approx(std, abs=1e-4), key
        assert row["params"] == ("" if params is None else str(params)), key
    tex = (out / "mini.tex").read_text()
    assert "\\multicolumn{2}{c}{ARC-c}" in tex and "61.00$\\pm$1.41 & 0.950$\\pm$0.071" in tex
    assert "Majority answer & -- & -- & 60.00 & --" in tex


def test_mini_runs_leave_table1_table2_and_other_alone(mini_results, tmp_path):
    """The default set: mini runs land in mini only (not `other`); Tables 1 and 2 come out byte for byte as
    without them."""
    root = tmp_path / "results"
    t1 = root / "t1_llama3_2_1b_abba_r16" / "seed0"
    t1.mkdir(parents=True)
    (t1 / "metrics.json").write_text(json.dumps({"boolq": {"accuracy": 0.7, "n": 10}}))
    (t1 / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "t1_llama3_2_1b_abba_r16", "seed": 0,
                                                    "table": "table1", "model": {"name": "llama3_2_1b"},
                                                    "peft": {"method": "abba", "r1": 8, "r2": 8}}))
    alone = tmp_path / "alone"
    shutil.copytree(t1, alone / "t1_llama3_2_1b_abba_r16" / "seed0")
    written = build_tables(root, tmp_path / "with_mini", plots=False)
    assert set(written) == {"table1", "table2", "mini"}  # no `other`: the mini runs are not in it
    build_tables(alone, tmp_path / "without_mini", plots=False, tables=("table1", "table2"))
    for name in ("table1.md", "table1.csv", "table1.tex", "table2.md", "table2.csv", "table2.tex"):
        assert (tmp_path / "with_mini" / name).read_text() == (tmp_path / "without_mini" / name).read_text(), name
    assert "1 evaluated runs" in (tmp_path / "with_mini" / "table1.md").read_text()


def test_mini_row_order():
    keys = ["loha_r8", "hira_r16", "full", "dora_r16", "pissa_r16", "rslora_r16", "lora_r16", "lora", "abba_r16",
            "zeta", "base"]
    assert sorted(keys, key=mini_order) == ["base", "abba_r16", "lora_r16", "lora", "rslora_r16", "pissa_r16",
                                            "dora_r16", "hira_r16", "loha_r8", "full", "zeta"]


def test_mini_cli_writes_four_files(mini_results, tmp_path):
    out = tmp_path / "tables"
    proc = subprocess.run([sys.executable, "-m", "abba.tables", f"results_dir={mini_results}", f"output_dir={out}",
                           "tables=mini"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mini: {out / 'mini.md'} (+ .tex .csv .png)"
    assert {p.name for p in out.iterdir()} == {"mini.md", "mini.csv", "mini.tex", "mini.png"}
    assert (out / "mini.png").stat().st_size > 10_000


def test_readme_mini_numbers_are_the_committed_tables():
    """The README's mini table quotes results/tables/mini.md: each quoted row's Avg cells equal the file's."""
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    section = readme.split("**The mini reproduction**", 1)[1].split("### Tables 1 and 2", 1)[0]

    def rows(text: str) -> list[list[str]]:
        return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
                if line.startswith("| ") and not line.startswith("| Method")]

    table = {cells[0]: cells for cells in rows((repo / "results" / "tables" / "mini.md").read_text())}
    quoted = 0
    for cells in rows(section):
        label = next(name for name in table if cells[0] == name or cells[0].startswith(name + " ("))
        assert cells[-2:] == table[label][-2:], (cells, table[label])  # Avg acc, Avg NLL
        assert cells[2] == table[label][2]  # seeds
        quoted += 1
    assert quoted >= 4  # base, ABBA, LoRA, majority at least
