"""Merge finished training runs and evaluate each on a benchmark group into results/<experiment>/seed<k>/.

    python -m eval.merge_eval arithmetic outputs/t2_mistral_7b_abba_r32/seed0 ...     (scripts/arithmetic_merge_eval.sh)
    python -m eval.merge_eval commonsense outputs/t1_llama3_2_1b_abba_r32/seed*       (scripts/cr_merge_eval.sh)

For every RUN: `python -m abba.merge` RUN/final into results/<experiment>/seed<k>/merged, `python -m eval.run
benchmark=<group>` into results/<experiment>/seed<k>/, copies of RUN/config.yaml and RUN/run_info.json beside the
metrics (the table builder reads them), then the merged weights are deleted unless KEEP_MERGED=1. Merging and
evaluating run as separate processes, so the GPU is free for vLLM after the merge. A re-run skips a finished
merge and resumes the evaluation. Environment: EVAL_ARGS / MERGE_ARGS (extra key=value arguments, e.g.
EVAL_ARGS="limit=50 backend=hf"), RESULTS_DIR (default results), KEEP_MERGED.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

#: The data task each group evaluates (RUN/config.yaml `data.task`).
TASKS = {"arithmetic": "arithmetic", "commonsense": "commonsense"}


class RunError(RuntimeError):
    """This run cannot be merged/evaluated; the message is one line."""


def run_identity(run_dir: Path, group: str) -> tuple[str, int]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunError(f"{run_dir} has no config.yaml: not a training run folder")
    if not (run_dir / "final").is_dir():
        raise RunError(f"{run_dir} has no final/ adapter: the run is not finished")
    config = yaml.safe_load(config_path.read_text())
    task = (config.get("data") or {}).get("task")
    if task and task != TASKS[group]:
        raise RunError(f"{run_dir} was trained on {task} data; evaluate it with the {task} group, not {group}")
    return str(config["experiment_name"]), int(config["seed"])


def results_folder(results_dir: Path, run_dir: Path, name: str, seed: int) -> Path:
    """results/<experiment>/seed<k>, plus the run folder's override suffix when it has one (a sweep's runs share
    experiment and seed: RUN = <output_root>/<experiment>/seed<k>/<overrides>, see abba.run_folder)."""
    parts = run_dir.resolve().parts
    marker = f"seed{seed}"
    suffix = parts[len(parts) - parts[::-1].index(marker):] if marker in parts else ()
    return results_dir.joinpath(name, marker, *suffix)


def merge_and_evaluate(run_dir: Path, group: str, results_dir: Path, eval_args: list[str], merge_args: list[str],
                       keep_merged: bool) -> Path:
    name, seed = run_identity(run_dir, group)
    out = results_folder(results_dir, run_dir, name, seed)
    merged = out / "merged"
    if not (merged / "merge_info.json").is_file():  # merge renames a complete folder into place
        subprocess.run([sys.executable, "-m", "abba.merge", f"adapter_dir={run_dir / 'final'}",
                        f"output_dir={merged}", *merge_args], check=True)
    subprocess.run([sys.executable, "-m", "eval.run", f"benchmark={group}", f"model_path={merged}",
                    f"output_dir={out}", *eval_args], check=True)
    for file in ("config.yaml", "run_info.json"):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, out / file)
    if not keep_merged:
        shutil.rmtree(merged)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in TASKS:
        print(f"usage: python -m eval.merge_eval {{{'|'.join(TASKS)}}} RUN_DIR...", file=sys.stderr)
        return 2
    group, runs = argv[0], [Path(r) for r in argv[1:]]
    results_dir = Path(os.environ.get("RESULTS_DIR", "results"))
    eval_args = shlex.split(os.environ.get("EVAL_ARGS", ""))
    merge_args = shlex.split(os.environ.get("MERGE_ARGS", ""))
    keep = os.environ.get("KEEP_MERGED", "0") not in ("", "0", "false")
    failed = []
    for run in runs:
        try:
            out = merge_and_evaluate(run, group, results_dir, eval_args, merge_args, keep)
            print(f"{run} -> {out}", flush=True)
        except (RunError, subprocess.CalledProcessError) as error:
            print(f"eval.merge_eval: {run}: {error}", file=sys.stderr, flush=True)
            failed.append(str(run))
    if failed:
        print(f"eval.merge_eval: {len(failed)} of {len(runs)} runs failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
