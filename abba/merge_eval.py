"""Merge finished training runs and evaluate each on a benchmark group into RESULTS (abba/layout.py).

    python -m abba.merge_eval arithmetic outputs/t2_mistral_7b_abba_r32/seed0 ...    (scripts/arithmetic_merge_eval.sh)
    python -m abba.merge_eval commonsense outputs/t1_llama3_2_1b_abba_r32/seed*      (scripts/cr_merge_eval.sh)

For every RUN: abba.merge folds RUN/final into RESULTS/merged, `python -m eval.run benchmark=<group>` evaluates it
into RESULTS = results/<experiment>/seed<k>[/<the run folder's override suffix>], RUN/config.yaml and
RUN/run_info.json are copied beside the metrics (the table builder reads them), then the merged weights are deleted
unless KEEP_MERGED is true (abba.cli.parse_bool: true/1 keep; unset, empty, false/0 do not). A re-run skips a
run whose RESULTS already holds its finished evaluation (every benchmark of the group, abba.layout.is_evaluated;
with limit=N in EVAL_ARGS a subset of that limit is finished): no merge, no eval.run, one line saying so. An
unfinished or partial evaluation is merged again (unless RESULTS/merged is kept) and resumed. Environment:
EVAL_ARGS / MERGE_ARGS (extra key=value arguments of eval.run / abba.merge, e.g. EVAL_ARGS="limit=50 backend=hf";
neither may set what this module sets for each run), RESULTS_DIR (default results), KEEP_MERGED.

Failures (abba/cli.py): a run that cannot be merged or evaluated gets one `error:` line (abba.merge's, eval.run's
own, or this module's), the other runs go on, and the exit status is 1; a bad command line, EVAL_ARGS or
MERGE_ARGS exits 2 before anything is merged; Ctrl-C exits 130 (finished merges are kept and evaluations resume:
run the same command again).
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from .cli import INTERRUPTED, UsageError, fail, first_line, hydra_arg, one_line_errors, parse_bool
from .layout import (CONFIG_FILE, FINAL_DIR, MERGE_INFO_FILE, MERGED_DIR, METRICS_FILE, REPO_ROOT, RUN_INFO_FILE,
                     is_evaluated, is_partial, results_folder)
from .table_registry import BENCHMARK_GROUPS

#: The benchmark groups this stage evaluates; each is also the data task (RUN/config.yaml `data.task`) it fits.
GROUPS = tuple(BENCHMARK_GROUPS)
USAGE = f"usage: python -m abba.merge_eval {{{'|'.join(GROUPS)}}} RUN_DIR..."


class RunError(RuntimeError):
    """This run cannot be merged/evaluated; the message is one line."""


class ChildFailed(RuntimeError):
    """eval.run exited non-zero; it has printed its own one-line error."""

    def __init__(self, code: int):
        super().__init__(f"exit status {code}")
        self.code = code


def run_identity(run_dir: Path, group: str) -> tuple[str, int]:
    """(experiment_name, seed) of a finished training run fit for `group`; RunError otherwise."""
    config_path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist: pass training run folders (outputs/<experiment>/seed<k>)")
    if not config_path.is_file():
        raise RunError(f"{run_dir} has no {CONFIG_FILE}, so it is not a training run folder: pass "
                       f"outputs/<experiment>/seed<k>")
    if not (run_dir / FINAL_DIR).is_dir():
        raise RunError(f"{run_dir} has no {FINAL_DIR}/ adapter: the run is not finished; finish it with resume=true")
    config = yaml.safe_load(config_path.read_text())
    task = (config.get("data") or {}).get("task")
    if task and task != group:
        raise RunError(f"{run_dir} was trained on {task} data; evaluate it with the {task} group, not {group}")
    return str(config["experiment_name"]), int(config["seed"])


def is_done(out: Path, group: str, eval_config: Any) -> bool:
    """Whether RESULTS `out` holds the evaluation EVAL_ARGS ask for (`eval_config`, eval.run's composed config):
    every benchmark of `group` scored, with an NLL when nll=true, on the whole test set, or with limit=N on a
    subset drawn with the same limit, subset and subset_seed."""
    limit = eval_config.get("limit")
    benchmarks = BENCHMARK_GROUPS[group]
    if not is_evaluated(out, benchmarks, nll=bool(eval_config.get("nll")), partial_ok=limit is not None):
        return False
    metrics = json.loads((out / METRICS_FILE).read_text())
    asked = (limit, str(eval_config.get("subset", "first")), int(eval_config.get("subset_seed", 0)))
    return all(not is_partial(metrics[b]) or asked == (metrics[b].get("limit"), metrics[b].get("subset", "first"),
                                                       metrics[b].get("subset_seed", 0)) for b in benchmarks)


def merge_and_evaluate(run_dir: Path, group: str, results_dir: Path, eval_args: list[str],
                       merge_options: dict[str, Any], keep_merged: bool, eval_config: Any) -> Path:
    """Merge RUN/final into RESULTS/merged (unless done), evaluate it, copy the run's files; returns RESULTS.
    A run whose evaluation is finished (is_done) is skipped: merging again would change the model's fingerprint
    and eval.run would generate every sample again."""
    name, seed = run_identity(run_dir, group)
    out = results_folder(results_dir, run_dir, name, seed)
    if is_done(out, group, eval_config):
        print(f"{run_dir}: {out / METRICS_FILE} already holds its {group} evaluation: skipped (no merge, no "
              f"eval.run; delete that file to evaluate again)", flush=True)
        return out
    merged = out / MERGED_DIR
    if not (merged / MERGE_INFO_FILE).is_file():  # merge renames a complete folder into place
        _merge(run_dir / FINAL_DIR, merged, merge_options)
    # Quoted for Hydra: a sweep member's folder name holds '=' and ','.
    _run([sys.executable, "-m", "eval.run", f"benchmark={group}", hydra_arg("model_path", merged),
          hydra_arg("output_dir", out), *eval_args])
    for file in (CONFIG_FILE, RUN_INFO_FILE):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, out / file)
    if not keep_merged:
        shutil.rmtree(merged)
    return out


def _merge(adapter_dir: Path, merged: Path, options: dict[str, Any]) -> None:
    """abba.merge in this process; a refusal is this run's RunError. The merge's memory is handed back (host and
    the CUDA cache; only this process's CUDA context stays on the GPU) before eval.run starts."""
    import torch

    from .gguf_source import ModelSourceError
    from .merge import MergeError, merge, summary
    from .merge_check import MergePrecisionWarning

    try:
        with warnings.catch_warnings():  # a precision warning for every run, as a process of its own would give
            warnings.simplefilter("always", MergePrecisionWarning)
            info = merge(adapter_dir, merged, **options)
    except (MergeError, ModelSourceError, OSError) as error:  # OSError: from_pretrained on an unreadable folder
        raise RunError(first_line(error, type(error).__name__)) from None
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(summary(info, merged), flush=True)


def _run(command: list[str]) -> None:
    """eval.run as a child process: a fresh process per evaluation, so its GPU memory (vLLM takes most of the
    device) is freed when it exits, and the next run's evaluation starts on an empty GPU."""
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


def _check_eval_args(group: str, eval_args: list[str]) -> Any:
    """EVAL_ARGS as eval.run will see them: composed (unknown keys, bad types) and value-checked, before anything
    is merged; returns eval.run's composed config. Raises UsageError with eval.run's one-line message, or for a
    key this module sets for each run."""
    from eval.checks import check_values
    from eval.run import load_config

    from .hydra_check import CommandLineError, check_command_line

    fixed = [f"benchmark={group}", "model_path=MODEL", "output_dir=OUT"]
    keys = {arg.partition("=")[0].lstrip("+~") for arg in eval_args}  # Hydra's +key= / ++key= / ~key forms too
    per_run = [key for key in ("benchmark", "model_path", "output_dir") if key in keys]
    if per_run:
        raise UsageError(f"EVAL_ARGS: {', '.join(k + '=' for k in per_run)}: set by abba.merge_eval for each run "
                         f"(the group, RESULTS/merged, RESULTS): leave it out")
    try:
        check_command_line(REPO_ROOT / "configs", "eval", [*fixed, *eval_args])
    except CommandLineError as error:
        raise UsageError(f"EVAL_ARGS: {error}") from None
    config = load_config([*fixed, *eval_args])
    try:
        check_values(config)
    except UsageError as error:
        raise UsageError(f"EVAL_ARGS: {error}") from None
    return config


def _merge_options(merge_args: list[str]) -> dict[str, Any]:
    """MERGE_ARGS as abba.merge's keyword arguments; UsageError for a bad one or for the two set per run."""
    from .merge import parse_options

    try:
        options = parse_options(merge_args)
    except UsageError as error:
        raise UsageError(f"MERGE_ARGS: {error}") from None
    per_run = [key for key in ("adapter_dir", "output_dir") if key in options]
    if per_run:
        raise UsageError(f"MERGE_ARGS: {', '.join(k + '=' for k in per_run)}: set by abba.merge_eval for each run "
                         f"(RUN/final, RESULTS/merged): leave it out")
    return options


def main(argv: list[str]) -> int:
    try:
        with one_line_errors(on_interrupt="interrupted: finished merges are kept and evaluations resume: run the "
                                          "same command again"):
            return _main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in GROUPS:
        raise UsageError(f"expected a group ({', '.join(GROUPS)}) and run folders, got {' '.join(argv) or 'nothing'}; "
                         f"{USAGE}")
    group, runs = argv[0], [Path(r) for r in argv[1:]]
    results_dir = Path(os.environ.get("RESULTS_DIR", "results"))
    eval_args = shlex.split(os.environ.get("EVAL_ARGS", ""))
    merge_options = _merge_options(shlex.split(os.environ.get("MERGE_ARGS", "")))
    keep_text = os.environ.get("KEEP_MERGED", "").strip()
    keep = parse_bool("KEEP_MERGED", keep_text) if keep_text else False
    eval_config = _check_eval_args(group, eval_args)  # a typo in EVAL_ARGS must not cost a merge first
    failed = []
    for run in runs:
        try:
            out = merge_and_evaluate(run, group, results_dir, eval_args, merge_options, keep, eval_config)
            print(f"{run} -> {out}", flush=True)
        except RunError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed.append(str(run))
        except ChildFailed as error:  # eval.run said why in its own `error:` line
            if error.code == INTERRUPTED:
                sys.exit(INTERRUPTED)
            failed.append(str(run))
    if failed and len(runs) > 1:  # with one run, its own line says it all
        fail(f"{len(failed)} of {len(runs)} runs failed: {' '.join(failed)}: fix them and run the same command "
             f"again (finished merges and evaluations are kept)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
