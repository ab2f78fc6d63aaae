"""Merge finished training runs and evaluate each on a benchmark group into results/<experiment>/seed<k>/.

    python -m eval.merge_eval arithmetic outputs/t2_mistral_7b_abba_r32/seed0 ...     (scripts/arithmetic_merge_eval.sh)
    python -m eval.merge_eval commonsense outputs/t1_llama3_2_1b_abba_r32/seed*       (scripts/cr_merge_eval.sh)

For every RUN: `python -m abba.merge` RUN/final into results/<experiment>/seed<k>/merged, `python -m eval.run
benchmark=<group>` into results/<experiment>/seed<k>/, copies of RUN/config.yaml and RUN/run_info.json beside the
metrics (the table builder reads them), then the merged weights are deleted unless KEEP_MERGED=1. Merging and
evaluating run as separate processes, so the GPU is free for vLLM after the merge. A re-run skips a finished
merge and resumes the evaluation. Environment: EVAL_ARGS / MERGE_ARGS (extra key=value arguments, e.g.
EVAL_ARGS="limit=50 backend=hf"), RESULTS_DIR (default results), KEEP_MERGED.

Failures (abba/cli.py): a run that cannot be merged or evaluated gets one `error:` line (abba.merge's or eval.run's
own, or this script's), the other runs go on, and the exit status is 1; a bad command line exits 2; Ctrl-C exits 130
(finished merges are kept and evaluations resume: run the same command again).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from abba.cli import INTERRUPTED, UsageError, fail, hydra_arg, one_line_errors
from abba.layout import results_folder
from abba.table_registry import BENCHMARK_GROUPS

#: The benchmark groups this script evaluates; each is also the data task (RUN/config.yaml `data.task`) it fits.
GROUPS = tuple(BENCHMARK_GROUPS)


class RunError(RuntimeError):
    """This run cannot be merged/evaluated; the message is one line."""


def run_identity(run_dir: Path, group: str) -> tuple[str, int]:
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist: pass training run folders (outputs/<experiment>/seed<k>)")
    if not config_path.is_file():
        raise RunError(f"{run_dir} has no config.yaml, so it is not a training run folder: pass "
                       f"outputs/<experiment>/seed<k>")
    if not (run_dir / "final").is_dir():
        raise RunError(f"{run_dir} has no final/ adapter: the run is not finished; finish it with resume=true")
    config = yaml.safe_load(config_path.read_text())
    task = (config.get("data") or {}).get("task")
    if task and task != group:
        raise RunError(f"{run_dir} was trained on {task} data; evaluate it with the {task} group, not {group}")
    return str(config["experiment_name"]), int(config["seed"])


def merge_and_evaluate(run_dir: Path, group: str, results_dir: Path, eval_args: list[str], merge_args: list[str],
                       keep_merged: bool) -> Path:
    name, seed = run_identity(run_dir, group)
    out = results_folder(results_dir, run_dir, name, seed)
    merged = out / "merged"
    if not (merged / "merge_info.json").is_file():  # merge renames a complete folder into place
        _run([sys.executable, "-m", "abba.merge", f"adapter_dir={run_dir / 'final'}", f"output_dir={merged}",
              *merge_args])
    # Quoted for Hydra: a sweep member's folder name holds '=' and ','.
    _run([sys.executable, "-m", "eval.run", f"benchmark={group}", hydra_arg("model_path", merged),
          hydra_arg("output_dir", out), *eval_args])
    for file in ("config.yaml", "run_info.json"):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, out / file)
    if not keep_merged:
        shutil.rmtree(merged)
    return out


class ChildFailed(RuntimeError):
    """abba.merge or eval.run exited non-zero; it has printed its own one-line error."""

    def __init__(self, code: int):
        super().__init__(f"exit status {code}")
        self.code = code


def _run(command: list[str]) -> None:
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the child too: let it save what it has and say so (eval.run keeps its samples).
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise KeyboardInterrupt from None
        raise ChildFailed(code if code > 0 else INTERRUPTED) from None
    if code:
        raise ChildFailed(code)


def main(argv: list[str]) -> int:
    try:
        with one_line_errors(on_interrupt="interrupted: finished merges are kept and evaluations resume: run the "
                                          "same command again"):
            return _main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _check_eval_args(group: str, eval_args: list[str]) -> None:
    """EVAL_ARGS as eval.run will see them: composed (unknown keys, bad types) and value-checked, before anything
    is merged. Raises UsageError with eval.run's one-line message."""
    from abba.hydra_check import CommandLineError, check_command_line
    from abba.layout import REPO_ROOT

    from .run import check_values, load_config

    fixed = [f"benchmark={group}", "model_path=MODEL", "output_dir=OUT"]
    try:
        check_command_line(REPO_ROOT / "configs", "eval", [*fixed, *eval_args])
    except CommandLineError as error:
        raise UsageError(f"EVAL_ARGS: {error}") from None
    try:
        check_values(load_config([*fixed, *eval_args]))
    except UsageError as error:
        raise UsageError(f"EVAL_ARGS: {error}") from None


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in GROUPS:
        raise UsageError(f"expected a group ({', '.join(GROUPS)}) and run folders, got {' '.join(argv) or 'nothing'}; "
                         f"usage: python -m eval.merge_eval {{{'|'.join(GROUPS)}}} RUN_DIR...")
    group, runs = argv[0], [Path(r) for r in argv[1:]]
    results_dir = Path(os.environ.get("RESULTS_DIR", "results"))
    eval_args = shlex.split(os.environ.get("EVAL_ARGS", ""))
    merge_args = shlex.split(os.environ.get("MERGE_ARGS", ""))
    keep = os.environ.get("KEEP_MERGED", "0") not in ("", "0", "false")
    _check_eval_args(group, eval_args)  # a typo in EVAL_ARGS must not cost a merge first
    failed = []
    for run in runs:
        try:
            out = merge_and_evaluate(run, group, results_dir, eval_args, merge_args, keep)
            print(f"{run} -> {out}", flush=True)
        except RunError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed.append(str(run))
        except ChildFailed as error:  # the child said why in its own `error:` line
            if error.code == INTERRUPTED:
                sys.exit(INTERRUPTED)
            failed.append(str(run))
    if failed and len(runs) > 1:  # with one run, its own line says it all
        fail(f"{len(failed)} of {len(runs)} runs failed: {' '.join(failed)}: fix them and run the same command "
             f"again (finished merges and evaluations are kept)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
