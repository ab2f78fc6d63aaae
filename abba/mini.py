"""The mini reproduction: Table 1's protocol at CPU size on a real pretrained model (SmolLM2-135M-Instruct).

    bash scripts/reproduce.sh mini dry_run=true     # the plan, with what is done already
    bash scripts/reproduce.sh mini                  # run what is missing (resumable; hours on 2 CPU cores)
    python -m abba.mini size=quick                  # the quickstart's ABBA vs LoRA (scripts/quickstart.sh)
    python -m abba.mini size=full                   # ABBA and LoRA on all records and test items (a GPU)
    python -m abba.mini dry_run=true methods=abba,lora   # options: size=cpu|quick|full, dry_run=, methods=

Every method (configs/experiment/m1_smollm2_<method>.yaml, shared settings in _m1_common.yaml) has the parameters
of LoRA r = 16 and trains on the same 1,024 records of the four local commonsense training splits. The stages,
each skipped when its output exists, so a killed run continues where it stopped:

1. **base**: the untuned model on the test items (the reference every method must beat);
2. **sweep**: per method, seed 0 at each point of its learning-rate grid (ABBA: also alpha); each run reports
   the NLL of 256 further training records it never saw (`data.heldout_size`, abba/train_model.py);
3. **select**: the grid point with the lowest held-out NLL, written to `<results>/selection.{json,md}`; the test
   sets are never used for a choice. What each choice rests on (config, run_info, held-out NLL, loss curve) is
   kept in `<results>/sweep/`, which is committed, so a later session does not retrain the sweep (only a chosen
   point's seed-0 run, when its run folder is gone and it was not evaluated yet);
4. **final**: the chosen setting for every seed (seed 0 is the sweep's run itself), merged and evaluated on
   ARC-Challenge, ARC-Easy, BoolQ (300 seeded items each) and OpenBookQA (all 500): accuracy with the paper's
   commonsense decoding and held-out NLL of the gold responses (eval.run nll=true);
5. **tables**: `python -m abba.tables ... tables=mini` -> results/tables/mini.{md,csv,tex,png}.

Stages run in priority order (`stages`): ABBA's and LoRA's sweeps, then both seed by seed, then each other
baseline, so whatever is finished when the machine is needed elsewhere is the most useful part. Results:
results/mini/<experiment>/seed<k>/ (metrics.json, samples, nll, config.yaml, run_info.json); run folders:
outputs/mini/. What runs, in which order, and where it goes is abba.mini_plan; this module runs it. A bad option
exits 2, a refusal (no CPU sweep choice for a size that needs it, another abba.mini on the same results folder, a
stage that did not finish) 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .cli import Refusal, UsageError, did_you_mean, hydra_arg, one_line_errors, parse_bool, parse_key_values
from .files import write_json, write_text
from .model import parameter_counts
from .layout import REPO_ROOT, seed_folder
from .mini_plan import (SIZES, Job, Size, copy_files, evaluated, experiment, only_methods, plan, print_plan,
                        stages, sweep_jobs, write_selection)
from .provenance import run_info

USAGE = "usage: python -m abba.mini [size=cpu|quick|full] [dry_run=true] [methods=NAME,...]"


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def evaluate(model_path: Path, out: Path, size: Size) -> None:
    """eval.run on each benchmark of the size (accuracy + NLL), the same seeded items for every model."""
    for benchmark, items in size.benchmarks:
        _run([sys.executable, "-m", "eval.run", f"benchmark={benchmark}", hydra_arg("model_path", model_path),
              hydra_arg("output_dir", out), "backend=hf", f"batch_size={size.eval_batch_size}", "nll=true",
              "subset=random", "subset_seed=0", f"limit={items if items is not None else 'null'}"])


def evaluate_run(job: Job) -> None:
    """Merge the job's adapter (unless merged already), evaluate it, copy the run's config.yaml, run_info.json and
    heldout_nll.json beside the metrics, and remove the merged model."""
    out = job.results_dir
    merged = out / "merged"
    if not (merged / "merge_info.json").is_file():
        _run([sys.executable, "-m", "abba.merge", f"adapter_dir={job.run_dir / 'final'}", f"output_dir={merged}",
              "overwrite=true"])
    evaluate(merged, out, job.size)
    copy_files(("config.yaml", "run_info.json", "heldout_nll.json"), job.run_dir, out)
    shutil.rmtree(merged)


def evaluate_base(size: Size) -> Path:
    """The untuned model into <results>/m1_smollm2_base/seed0, with a config.yaml/run_info.json describing it."""
    import yaml

    from .base_model import build_model, pretrained_folder

    entry = yaml.safe_load((REPO_ROOT / "configs" / "model" / "smollm2_135m.yaml").read_text())
    out = seed_folder(size.results_dir, experiment("base"), 0)
    if evaluated(out, size):
        return out
    folder = pretrained_folder(entry)
    evaluate(Path(folder), out, size)
    total = parameter_counts(build_model(entry))[1]
    config = {"experiment_name": experiment("base"), "seed": 0, "table": "mini", "model": entry,
              "peft": {"method": "base"}, "note": "the untuned model (no training)"}
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(out / "run_info.json", run_info(experiment("base"), 0, "base", 1, 0, total, table="mini",
                                               finished=True))
    return out


def run_stage(stage: str, methods: list[str], size: Size) -> None:
    """Train (and for a seed stage, merge and evaluate) what the stage holds, skipping what is done."""
    for method in methods:
        if stage == "sweep":
            for job in sweep_jobs(method, size):
                if job.heldout_nll is None:
                    _run(job.command)
                if not (job.record_dir / "run_info.json").is_file():
                    job.keep_record()
            write_selection(size)
            continue
        for job in (j for j in plan(size) if j.method == method and j.final and f"seed{j.seed}" == stage):
            if job.evaluated:  # committed results: nothing to redo, even when the run folder is gone
                continue
            if not job.trained:
                _run(job.command)
            evaluate_run(job)


def parse(argv: list[str]) -> tuple[Size, bool]:
    """(the size, limited to methods=; dry_run) from `key=value` arguments. Raises UsageError."""
    options = parse_key_values(argv, {"size": "cpu", "dry_run": "false", "methods": ""}, USAGE)
    if options["size"] not in SIZES:
        raise UsageError(f"size={options['size']}: no such size{did_you_mean(options['size'], SIZES)}; sizes: "
                         f"{', '.join(sorted(SIZES))}")
    return only_methods(SIZES[options["size"]], options["methods"]), parse_bool("dry_run", options["dry_run"])


def run_all(size: Size) -> list[str]:
    """Every stage of the size, under a lock on its results folder, then the tables; returns the stages that did
    not finish. Raises Refusal when another abba.mini holds the lock."""
    from filelock import FileLock, Timeout

    Path(size.results_dir).mkdir(parents=True, exist_ok=True)
    try:  # two drivers on one results folder would train the same run folders twice
        lock = FileLock(str(Path(size.results_dir) / ".mini.lock"), timeout=0).acquire()
    except Timeout:
        raise Refusal(f"another abba.mini is running on {size.results_dir} (lock {size.results_dir}/.mini.lock): "
                      "wait for it to finish") from None
    failed = []
    with lock:
        evaluate_base(size)
        for stage, methods in stages(size):
            try:
                run_stage(stage, methods, size)
            except subprocess.CalledProcessError as error:  # the others still run; a re-run resumes this one
                print(f"abba.mini: {stage} of {', '.join(methods)} stopped: {' '.join(error.cmd[1:4])} exited "
                      f"with {error.returncode}", file=sys.stderr, flush=True)
                failed.append(f"{stage}:{'+'.join(methods)}")
        results = Path(size.results_dir)
        tables_dir = results.parent / "tables" if size.name == "cpu" else results / "tables"
        _run([sys.executable, "-m", "abba.tables", f"results_dir={size.results_dir}", f"output_dir={tables_dir}",
              "tables=mini"])
    return failed


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring): 0 when every stage finished; one `error:` line and exit 2 for
    a bad option, 1 for a refusal or a stage that did not finish."""
    with one_line_errors(on_interrupt="interrupted: run the same command again to resume (finished runs and "
                                      "evaluations are kept)"):
        size, dry_run = parse(sys.argv[1:] if argv is None else argv)
        if dry_run:
            print_plan(size, plan(size))
            return 0
        failed = run_all(size)
    if failed:  # returned, not raised: scripts/gpu_mini.py calls main() and reads the status
        print(f"error: {len(failed)} stage(s) did not finish: {', '.join(failed)}: run the same command again to "
              "resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
