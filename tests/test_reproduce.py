"""scripts/reproduce.sh: the dry run lists exactly the paper's rows (LoRA-Pro included) x seeds
0,1,2 with GPU-hour estimates from paper v4 Table 10; a re-run skips finished training and evaluation."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from abba.reproduce import plan, print_plan
from abba.table_registry import paper_reference

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = paper_reference()  # results/paper_reference.yaml, through the registry (the one source)
NOT_IMPLEMENTED: set[str] = set()  # every row of the paper runs here (LoRA-Pro: abba/lorapro.py)
JOB = re.compile(r"^job (\S+) seed=(\d+) model=(\S+) method=(\S+) train=(todo|done) eval=(todo|done) run=(\S+) "
                 r"~([\d.]+) GPU-h")
# Paper v4 Table 10, training wall time (LoRA, ABBA), in seconds.
TABLE10 = {"llama3_2_1b": (2 * 3600 + 42 * 60 + 17, 2 * 3600 + 46 * 60 + 18),
           "llama3_2_3b": (6 * 3600 + 5 * 60 + 43, 6 * 3600 + 11 * 60 + 26),
           "mistral_7b": (1 * 3600 + 15 * 60 + 55, 1 * 3600 + 18 * 60 + 22),
           "gemma2_9b": (1 * 3600 + 45 * 60 + 33, 1 * 3600 + 49 * 60 + 45)}


def dry_run(table: str, tmp_path: Path, *overrides: str) -> str:
    env = {**os.environ, "RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run(["bash", "scripts/reproduce.sh", table, "dry_run=true", f"paths.output_root={tmp_path / 'out'}",
                           *overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_dry_run_lists_the_paper_rows_times_three_seeds(table, tmp_path):
    out = dry_run(table, tmp_path)
    jobs = [JOB.match(line) for line in out.splitlines() if line.startswith("job ")]
    assert all(jobs), out
    listed = sorted((m[3], m[4], int(m[2])) for m in jobs)
    paper = sorted((model, method, seed) for model, spec in REFERENCE["tables"][table]["models"].items()
                   for method in spec["methods"] if method not in NOT_IMPLEMENTED for seed in (0, 1, 2))
    assert listed == paper
    assert len(listed) == 2 * 9 * 3
    assert not (tmp_path / "out").exists()  # a dry run starts nothing
    # Estimate: ABBA rows take ABBA's Table 10 time, every other row LoRA's.
    total_s = sum(TABLE10[model][1 if method.startswith("abba") else 0] for model, method, _ in listed)
    summary = out.strip().splitlines()[-1]
    assert f"{total_s / 3600:.1f} GPU-hours in all" in summary and "ESTIMATES" in summary


def test_rerun_skips_finished_training_and_evaluation(tmp_path, capsys):
    out_root, results = tmp_path / "out", tmp_path / "results"
    overrides = [f"paths.output_root={out_root}"]
    # seed 0 of Mistral ABBA r=32 trained and fully evaluated; seed 1 trained, evaluated on GSM8K only;
    # seed 2 interrupted (checkpoint, no final/).
    for seed in (0, 1):
        (out_root / "t2_mistral_7b_abba_r32" / f"seed{seed}" / "final").mkdir(parents=True)
    (out_root / "t2_mistral_7b_abba_r32" / "seed2" / "checkpoint-100").mkdir(parents=True)
    for seed, benches in ((0, ("gsm8k", "math")), (1, ("gsm8k",))):
        folder = results / "t2_mistral_7b_abba_r32" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({b: {"accuracy": 0.5} for b in benches}))
    jobs = {(j.experiment, j.seed): j for j in plan("table2", [0, 1, 2], overrides, str(results))}
    assert len(jobs) == 2 * 9 * 3  # 9 rows per model: LoRA-Pro included
    done = {k for k, j in jobs.items() if j.trained}
    assert done == {("t2_mistral_7b_abba_r32", 0), ("t2_mistral_7b_abba_r32", 1)}
    assert {k for k, j in jobs.items() if j.trained and not j.evaluated} == {("t2_mistral_7b_abba_r32", 1)}
    assert jobs[("t2_mistral_7b_abba_r32", 2)].run_dir == out_root / "t2_mistral_7b_abba_r32" / "seed2"
    # The dry run's listing reports the same state.
    print_plan("table2", list(jobs.values()))
    lines = {(m[1], int(m[2])): (m[5], m[6]) for m in map(JOB.match, capsys.readouterr().out.splitlines()) if m}
    assert lines[("t2_mistral_7b_abba_r32", 0)] == ("done", "done")
    assert lines[("t2_mistral_7b_abba_r32", 1)] == ("done", "todo")
    assert lines[("t2_mistral_7b_abba_r32", 2)] == ("todo", "todo")


def test_a_partial_evaluation_is_done_again_and_sweep_members_have_own_results(tmp_path):
    """Issue 11: a `limit` evaluation counted as done (the next run skipped it, the table showed it as a number),
    and a run with an override had its results looked up in the plain run's folder."""
    out_root, results = tmp_path / "out", tmp_path / "results"
    overrides = [f"paths.output_root={out_root}", "trainer.per_device_train_batch_size=2"]
    jobs = {(j.experiment, j.seed): j for j in plan("table2", [0], overrides, str(results))}
    job = jobs[("t2_mistral_7b_abba_r32", 0)]
    member = "trainer.per_device_train_batch_size=2"
    assert job.run_dir == out_root / "t2_mistral_7b_abba_r32" / "seed0" / member
    assert job.results_dir == results / "t2_mistral_7b_abba_r32" / "seed0" / member
    job.results_dir.mkdir(parents=True)
    metrics = job.results_dir / "metrics.json"
    metrics.write_text(json.dumps({b: {"accuracy": 0.5, "n": 100, "limit": 100} for b in ("gsm8k", "math")}))
    assert not job.evaluated  # 100 items of each: partial
    metrics.write_text(json.dumps({b: {"accuracy": 0.5, "n": 1319, "limit": 5000} for b in ("gsm8k", "math")}))
    assert job.evaluated  # a limit above the set's size scores all of it
    metrics.write_text(json.dumps({b: {"accuracy": 0.5, "n": 1319, "limit": None} for b in ("gsm8k", "math")}))
    assert job.evaluated
    plain = results / "t2_mistral_7b_abba_r32" / "seed0" / "metrics.json"
    plain.write_text(metrics.read_text())
    metrics.unlink()
    assert not job.evaluated  # the plain run's results are not this run's


def test_bad_table_is_a_one_line_error():
    proc = subprocess.run(["bash", "scripts/reproduce.sh", "table3", "dry_run=true"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "table1, table2 or mini" in proc.stderr.splitlines()[0]


@pytest.mark.parametrize("argv, needle", [
    (["table3"], "first argument must be a table (table1, table2), got 'table3' (did you mean: "),
    (["table1", "print=plna"], "print=plna is not one of plan, experiments"),
    (["table1", "results_dir=a", "results_dir=b"], "results_dir= given twice"),
    (["table1", "seeds=0,x"], "expected integers separated by commas"),
])
def test_module_command_line_is_key_value(argv, needle, capsys):
    """python -m abba.reproduce TABLE key=value...: a bad table, option value or a repeated option is a usage error
    (exit 2, one line) before anything is composed."""
    from abba.reproduce import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_module_prints_experiments_and_script_with_key_value_options(capsys):
    from abba.reproduce import main
    from abba.table_registry import table_experiments

    main(["table2", "print=experiments", "seeds=0"])
    main(["table1", "print=merge-eval-script"])
    assert capsys.readouterr().out.splitlines() == [",".join(table_experiments("table2")), "scripts/cr_merge_eval.sh"]
