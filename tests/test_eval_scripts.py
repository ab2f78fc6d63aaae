"""scripts/cr_merge_eval.sh end to end on a tiny ABBA run: results/<experiment>/seed<k>/ gets metrics for all
eight commonsense benchmarks, the samples, copies of config.yaml and run_info.json, and no merged weights."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from abba.modeling import REPO_ROOT
from eval_helpers import abba_run, write_run_config


@pytest.mark.slow
def test_cr_merge_eval_script_writes_results_folder(shared_data, tokenizer, tmp_path):
    run = tmp_path / "outputs" / "test_abba" / "seed3"
    abba_run(run, tokenizer, seed=3)
    write_run_config(run, "test_abba_cr", 3, "abba", task="commonsense")
    env = dict(os.environ, RESULTS_DIR=str(tmp_path / "results"), EVAL_ARGS="limit=2 backend=hf batch_size=2",
               ABBA_DATA_DIR=str(shared_data), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "cr_merge_eval.sh"), str(run)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results" / "test_abba_cr" / "seed3"
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics) == sorted(["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy",
                                      "ARC-Challenge", "openbookqa"])
    assert all(entry["n"] == 2 for entry in metrics.values())
    assert all(len((out / f"samples_{name}.jsonl").read_text().splitlines()) == 2 for name in metrics)
    assert (out / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert (out / "run_info.json").read_text() == (run / "run_info.json").read_text()
    assert not (out / "merged").exists()

    # An arithmetic evaluation of a commonsense run is refused with a one-line reason (and a non-zero exit).
    wrong = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "arithmetic_merge_eval.sh"), str(run)], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "trained on commonsense data" in wrong.stderr


def test_results_folder_keeps_the_run_folders_override_suffix(tmp_path):
    """Two runs of one experiment and seed that differ by overrides (a sweep) get two results folders."""
    from eval.merge_eval import results_folder

    results = tmp_path / "results"
    plain = tmp_path / "outputs" / "t2_mistral_7b_abba_r32" / "seed1"
    swept = plain / "peft.lr=1e-4,peft.r1=8"
    assert results_folder(results, plain, "t2_mistral_7b_abba_r32", 1) == results / "t2_mistral_7b_abba_r32" / "seed1"
    assert results_folder(results, swept, "t2_mistral_7b_abba_r32", 1) == (
        results / "t2_mistral_7b_abba_r32" / "seed1" / "peft.lr=1e-4,peft.r1=8")
    assert results_folder(results, tmp_path / "elsewhere", "x", 0) == results / "x" / "seed0"  # output_dir=...
