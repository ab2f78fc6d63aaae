"""abba.tables: tables rebuilt from synthetic metrics.json files, every Markdown and CSV cell checked against
values worked out by hand (mean, sample std over seeds, difference to the paper's number, "–" for no run)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from abba.table_registry import paper_reference
from abba.tables import build_tables, method_key

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = paper_reference()  # results/paper_reference.yaml, through the registry (the one source)


def write_run(root: Path, experiment: str, seed: int, peft: dict, table: str | None, model: str,
              accuracies: dict[str, float], trainable: int, with_config: bool = True) -> None:
    """A results/<experiment>/seed<k>/ folder as scripts/*_merge_eval.sh leaves it."""
    out = root / experiment / f"seed{seed}"
    out.mkdir(parents=True)
    metrics = {b: {"benchmark": b, "accuracy": a, "n": 100, "n_invalid": 0, "backend": "hf"} for b, a in accuracies.items()}
    (out / "metrics.json").write_text(json.dumps(metrics))
    if with_config:
        cfg = {"experiment_name": experiment, "seed": seed, "table": table, "model": {"name": model},
               "peft": peft, "data": {"task": "arithmetic"}}
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    info = {"git_commit": "0123456789abcdef", "trainable_params": trainable, "experiment_name": experiment,
            "seed": seed, "hardware": {"cuda": True, "gpus": ["NVIDIA A6000"], "cpu_count": 8}}
    (out / "run_info.json").write_text(json.dumps(info))


@pytest.fixture()
def table2_results(tmp_path):
    """Mistral-7B, two methods x two seeds; LoRA has no MATH result (the missing cell)."""
    root = tmp_path / "results"
    abba = {"method": "abba", "r1": 16, "r2": 16, "alpha": 24}
    lora = {"method": "lora", "r": 32, "alpha": 64}
    write_run(root, "t2_mistral_7b_abba_r32", 0, abba, "table2", "mistral_7b", {"gsm8k": 0.66, "math": 0.18}, 83886080)
    write_run(root, "t2_mistral_7b_abba_r32", 1, abba, "table2", "mistral_7b", {"gsm8k": 0.67, "math": 0.19}, 83886080)
    write_run(root, "t2_mistral_7b_lora", 0, lora, "table2", "mistral_7b", {"gsm8k": 0.61}, 83886080)
    write_run(root, "t2_mistral_7b_lora", 1, lora, "table2", "mistral_7b", {"gsm8k": 0.63}, 83886080)
    return root


def markdown_rows(text: str, model_label: str) -> dict[str, list[str]]:
    """{method label: [cells...]} of the Markdown table under '### <model_label>'."""
    block = text.split(f"### {model_label}\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table2_every_markdown_and_csv_cell(table2_results, tmp_path):
    out = tmp_path / "tables"
    build_tables(table2_results, out, plots=False, tables=("table2",))

    # Worked by hand: two seeds a, b -> mean (a + b) / 2, sample std |a - b| / sqrt(2) = 0.7071 (1 point apart)
    # or 1.4142 (2 points apart). Paper v4 Table 2, Mistral-7B: ABBA r=32 66.26 / 18.08, LoRA 61.94 / 15.98.
    expected_md = {
        "ABBA r=32": ["83.89 M (83.88 M)", "2", "66.50 ± 0.71 (66.26; +0.24)", "18.50 ± 0.71 (18.08; +0.42)"],
        "LoRA": ["83.89 M (83.88 M)", "2", "62.00 ± 1.41 (61.94; +0.06)", "– (15.98)"],
    }
    md = (out / "table2.md").read_text()
    mistral = markdown_rows(md, "Mistral-7B")
    paper_rows = REFERENCE["tables"]["table2"]["models"]["mistral_7b"]["methods"]
    assert list(mistral) == [row["label"] for row in paper_rows.values()]  # the paper's rows, in its order
    for label, cells in mistral.items():
        if label in expected_md:
            assert cells == expected_md[label], label
        else:  # no run: dashes beside the paper's numbers, never 0
            row = next(r for r in paper_rows.values() if r["label"] == label)
            assert cells == [f"– ({row['params']})", "0", f"– ({row['gsm8k']:.2f})", f"– ({row['math']:.2f})"]
    gemma = markdown_rows(md, "Gemma-2 9B")
    assert len(gemma) == 9 and all(cells[0].startswith("– (") and cells[1] == "0" for cells in gemma.values())
    assert "commits: 0123456789" in md and "2x NVIDIA A6000" not in md and "1x NVIDIA A6000" in md

    rows = list(csv.DictReader((out / "table2.csv").open()))
    assert len(rows) == 2 * 9 * 2  # models x paper methods x benchmarks
    got = {(r["model"], r["method"], r["benchmark"]): r for r in rows}
    sd1, sd2 = 1 / math.sqrt(2), 2 / math.sqrt(2)
    hand = {  # (n, mean, std, paper, diff)
        ("mistral_7b", "abba_r32", "gsm8k"): (2, 66.5, sd1, 66.26, 0.24),
        ("mistral_7b", "abba_r32", "math"): (2, 18.5, sd1, 18.08, 0.42),
        ("mistral_7b", "lora", "gsm8k"): (2, 62.0, sd2, 61.94, 0.06),
        ("mistral_7b", "lora", "math"): (0, None, None, 15.98, None),
    }
    for key, row in got.items():
        n, mean, std, paper, diff = hand.get(key, (0, None, None, None, None))
        if key not in hand:
            paper = REFERENCE["tables"]["table2"]["models"][key[0]]["methods"][key[1]][key[2]]
        assert int(row["n_seeds"]) == n, key
        for field, value in (("mean", mean), ("std", std), ("paper", paper), ("diff", diff)):
            if value is None:
                assert row[field] == "", (key, field)  # missing: empty, never 0
            else:
                assert float(row[field]) == pytest.approx(value, abs=1e-4), (key, field)
        assert row["params"] == ("83886080" if key[1] in ("abba_r32", "lora") and key[0] == "mistral_7b" else "")
    tex = (out / "table2.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "66.50$\\pm$0.71" in tex


def test_table1_average_over_complete_seeds(tmp_path):
    """Avg = per-seed mean over the eight benchmarks, then mean ± std over seeds; a seed missing a benchmark
    is left out of the Avg but still counts in the benchmarks it has."""
    benches = REFERENCE["tables"]["table1"]["benchmarks"]
    root = tmp_path / "results"
    peft = {"method": "abba", "r1": 8, "r2": 8}
    seed0 = {b: 0.50 + 0.01 * i for i, b in enumerate(benches)}      # mean 53.5
    seed1 = {b: 0.60 + 0.01 * i for i, b in enumerate(benches)}      # mean 63.5
    seed2 = {b: 0.70 for b in benches[:-1]}                          # no openbookqa
    for seed, acc in enumerate((seed0, seed1, seed2)):
        write_run(root, "t1_llama3_2_1b_abba_r16", seed, peft, "table1", "llama3_2_1b", acc, 11272192)
    build_tables(root, tmp_path / "tables", plots=False, tables=("table1",))
    rows = {(r["method"], r["benchmark"]): r for r in csv.DictReader((tmp_path / "tables" / "table1.csv").open())
            if r["model"] == "llama3_2_1b"}
    avg = rows[("abba_r16", "avg")]
    assert int(avg["n_seeds"]) == 2
    assert float(avg["mean"]) == pytest.approx(58.5, abs=1e-4)
    assert float(avg["std"]) == pytest.approx(10 / math.sqrt(2), abs=1e-4)
    assert float(avg["diff"]) == pytest.approx(58.5 - 73.76, abs=1e-4)  # paper v4 Table 1: 1B ABBA r=16 Avg 73.76
    boolq = rows[("abba_r16", "boolq")]  # three seeds: 50, 60, 70 -> mean 60, std 10
    assert (int(boolq["n_seeds"]), float(boolq["mean"]), float(boolq["std"])) == (3, pytest.approx(60.0), pytest.approx(10.0))
    assert int(rows[("abba_r16", "openbookqa")]["n_seeds"]) == 2
    md = (tmp_path / "tables" / "table1.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header == ("| Method | Params | Seeds | BoolQ | PIQA | SIQA | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA "
                      "| Avg |")
    assert "| ABBA r=16 | 11.27 M (11.27 M) | 3 | 60.00 ± 10.00 (65.96; -5.96) |" in md


@pytest.mark.parametrize("cfg, key", [
    ({"peft": {"method": "abba", "r1": 16, "r2": 16}}, "abba_r32"),
    ({"peft": {"method": "abba", "r1": 8, "r2": 8}}, "abba_r16"),
    ({"peft": {"method": "abba", "r1": 32, "r2": 32, "scaling": "official"}}, "abba_r64_official"),
    ({"peft": {"method": "lora", "r": 32}}, "lora"),
    ({"peft": {"method": "lorapro", "r": 32}}, "lora_pro"),  # the paper's LoRA-Pro row
    ({"peft": {"method": "lorapro", "r": 8}}, "lora_pro_r8"),
    ({"peft": {"method": "dora", "r": 16}}, "dora_r16"),
    ({"peft": {"method": "full"}}, "full"),
])
def test_method_key_rule(cfg, key):
    assert method_key(cfg) == key


def test_run_without_config_falls_back_to_experiment_name_and_other_runs(tmp_path):
    root = tmp_path / "results"
    write_run(root, "t2_gemma2_9b_hira", 0, {}, None, "", {"gsm8k": 0.5, "math": 0.25}, 108036096, with_config=False)
    write_run(root, "quickstart_abba", 0, {"method": "abba", "r1": 4, "r2": 4}, None, "tiny_llama", {"gsm8k": 0.03}, 16384)
    written = build_tables(root, tmp_path / "tables", plots=True)
    assert set(written) == {"table1", "table2", "other"}
    gemma = markdown_rows((tmp_path / "tables" / "table2.md").read_text(), "Gemma-2 9B")
    assert gemma["HiRA"] == ["108.04 M (108.04 M)", "1", "50.00 (78.47; -28.47)", "25.00 (38.22; -13.22)"]
    other = markdown_rows((tmp_path / "tables" / "other.md").read_text(), "tiny_llama")
    assert other == {"ABBA r=8": ["16.38 K", "1", "3.00"]}
    assert (tmp_path / "tables" / "table2.png").stat().st_size > 1000


def test_cli_bad_argument_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "abba.tables", f"results_dir={tmp_path}", "colour=red"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "colour" in proc.stderr


@pytest.mark.parametrize("args, code, says", [
    (["tables="], 2, "tables=None is not a list of tables"),
    (["tables=1"], 2, "tables=1 is not a list of tables"),
    (["output_dir="], 2, "output_dir= needs a value"),
    (["results_dir="], 2, "results_dir= needs a value"),
    (["output_dir=FILE"], 1, "is a file: pass a folder"),
    (["plots=maybe"], 2, "plots=maybe: expected true or false"),
])
def test_cli_empty_or_wrong_values_are_one_line(tmp_path, args, code, says):
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "abba.tables", f"results_dir={tmp_path}", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and says in proc.stderr and "Traceback" not in proc.stderr
