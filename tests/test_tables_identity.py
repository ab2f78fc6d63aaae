"""abba.tables keeps every number with the run that produced it (issue 11): sweep members are rows of their own,
two results folders claiming one cell are refused, and a `limit` evaluation is marked partial. Values by hand."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml
from test_tables import REPO_ROOT, markdown_rows

from abba.tables import TablesError, build_tables


def write(root, rel: str, experiment: str, seed: int, peft: dict, accuracies: dict, limit=None, table="table2"):
    out = root / rel
    out.mkdir(parents=True)
    metrics = {b: {"benchmark": b, "accuracy": a, "n": 100 if limit is None else min(limit, 100), "limit": limit}
               for b, a in accuracies.items()}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "config.yaml").write_text(yaml.safe_dump({"experiment_name": experiment, "seed": seed, "table": table,
                                                     "model": {"name": "mistral_7b"}, "peft": peft}))
    (out / "run_info.json").write_text(json.dumps({"trainable_params": 1000, "seed": seed}))


ABBA = {"method": "abba", "r1": 16, "r2": 16, "alpha": 24}


def test_two_sweep_members_are_two_rows_with_their_own_scores(tmp_path):
    root = tmp_path / "results"
    write(root, "t2_mistral_7b_abba_r32/seed0", "t2_mistral_7b_abba_r32", 0, ABBA, {"gsm8k": 0.60, "math": 0.10})
    write(root, "t2_mistral_7b_abba_r32/seed0/peft.lr=0.0001", "t2_mistral_7b_abba_r32", 0, ABBA,
          {"gsm8k": 0.50, "math": 0.20})
    write(root, "t2_mistral_7b_abba_r32/seed0/peft.lr=0.01", "t2_mistral_7b_abba_r32", 0, ABBA,
          {"gsm8k": 0.40, "math": 0.30})
    build_tables(root, tmp_path / "tables", tables=["table2"], plots=False)
    rows = markdown_rows((tmp_path / "tables" / "table2.md").read_text(), "Mistral-7B")
    # The plain run fills the paper's row (with the paper's 66.13 / 18.94 beside it); each member has its own.
    assert rows["ABBA r=32"][2].startswith("60.00 (") and rows["ABBA r=32"][3].startswith("10.00 (")
    assert rows["ABBA r=32 (peft.lr=0.0001)"][2:4] == ["50.00", "20.00"]
    assert rows["ABBA r=32 (peft.lr=0.01)"][2:4] == ["40.00", "30.00"]
    assert all(r[1] == "1" for label, r in rows.items() if label.startswith("ABBA r=32"))  # one seed each, no mean


def test_two_folders_claiming_one_cell_are_refused_in_one_line(tmp_path):
    root = tmp_path / "results"
    write(root, "t2_mistral_7b_abba_r32/seed0", "t2_mistral_7b_abba_r32", 0, ABBA, {"gsm8k": 0.60})
    write(root, "renamed_copy/seed0", "renamed_copy", 0, ABBA, {"gsm8k": 0.10})
    with pytest.raises(TablesError, match="are both abba_r32 seed 0 of mistral_7b"):
        build_tables(root, tmp_path / "tables", tables=["table2"], plots=False)
    proc = subprocess.run([sys.executable, "-m", "abba.tables", f"results_dir={root}",
                           f"output_dir={tmp_path / 'tables'}", "tables=table2", "plots=false"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "renamed_copy" in proc.stderr and not (tmp_path / "tables" / "table2.md").exists()


def test_a_limit_evaluation_is_marked_partial(tmp_path):
    root = tmp_path / "results"
    write(root, "t2_mistral_7b_abba_r32/seed0", "t2_mistral_7b_abba_r32", 0, ABBA, {"gsm8k": 0.60, "math": 0.10})
    write(root, "t2_mistral_7b_abba_r32/seed1", "t2_mistral_7b_abba_r32", 1, ABBA, {"gsm8k": 0.70, "math": 0.20},
          limit=50)
    write(root, "t2_mistral_7b_lora/seed0", "t2_mistral_7b_lora", 0, {"method": "lora", "r": 32, "alpha": 64},
          {"gsm8k": 0.50, "math": 0.05}, limit=1000)  # more than the set holds: all 100 items, not partial
    build_tables(root, tmp_path / "tables", tables=["table2"], plots=False)
    text = (tmp_path / "tables" / "table2.md").read_text()
    rows = markdown_rows(text, "Mistral-7B")
    assert rows["ABBA r=32"][2].startswith("65.00 ± 7.07 (") and rows["ABBA r=32"][2].endswith(" †")
    assert rows["ABBA r=32"][3].endswith(" †")
    assert not any("†" in cell for cell in rows["LoRA"])
    assert "- " + str(root / "t2_mistral_7b_abba_r32/seed1/metrics.json") + ": gsm8k 50 items (limit=50" in text
    with open(tmp_path / "tables" / "table2.csv") as f:
        flags = {(r["method"], r["benchmark"]): r["partial"] for r in csv.DictReader(f) if r["model"] == "mistral_7b"}
    assert flags[("abba_r32", "gsm8k")] == "true" and flags[("lora", "gsm8k")] == ""
    assert "\\dagger" in (tmp_path / "tables" / "table2.tex").read_text()
