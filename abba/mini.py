"""The mini reproduction: Table 1's protocol at CPU size on a real pretrained model (SmolLM2-135M-Instruct).

    bash scripts/reproduce.sh mini --dry-run        # the plan, with what is done already
    bash scripts/reproduce.sh mini                  # run what is missing (resumable; hours on 2 CPU cores)
    python -m abba.mini --size quick                # the quickstart's ABBA vs LoRA (scripts/quickstart.sh)
    python -m abba.mini --size full                 # ABBA and LoRA on all records and test items (a GPU)

Every method (configs/experiment/m1_smollm2_<method>.yaml, shared settings in _m1_common.yaml) has the parameters
of LoRA r = 16 and trains on the same 1,024 records of the four local commonsense training splits. The stages,
each skipped when its output exists, so a killed run continues where it stopped:

1. **base**: the untuned model on the test items (the reference every method must beat);
2. **sweep**: per method, seed 0 at each point of its learning-rate grid (ABBA: also alpha); each run reports
   the NLL of 256 further training records it never saw (`data.heldout_size`, abba/train.py);
3. **select**: the grid point with the lowest held-out NLL, written to `<results>/selection.{json,md}`; the test
   sets are never used for a choice. What each choice rests on (config, run_info, held-out NLL, loss curve) is
   kept in `<results>/sweep/`, which is committed, so a later session does not retrain the sweep (only a chosen
   point's seed-0 run, when its run folder is gone and it was not evaluated yet);
4. **final**: the chosen setting for every seed (seed 0 is the sweep's run itself), merged and evaluated on
   ARC-Challenge, ARC-Easy, BoolQ (300 seeded items each) and OpenBookQA (all 500): accuracy with the paper's
   commonsense decoding and held-out NLL of the gold responses (eval.run nll=true);
5. **tables**: `python -m abba.tables ... tables=mini` -> results/tables/mini.{md,csv,tex,png}.

Stages run in priority order (`stages`): ABBA's and LoRA's sweeps, then both seed by seed, then each other
baseline, so whatever is finished when the machine is needed elsewhere is the most useful part. Results: results/mini/<experiment>/seed<k>/
(metrics.json, samples, nll, config.yaml, run_info.json); run folders: outputs/mini/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .cli import hydra_arg
from .layout import REPO_ROOT
from .layout import default_run_dir, is_finished
from .provenance import run_info
from .files import write_text, write_json
from .table_registry import MINI_METHODS

METHODS = MINI_METHODS  # abba.table_registry: the mini table's methods
LR_GRID = ("0.001", "0.003")
#: ABBA's alpha sets its scaling s = alpha^2 / sqrt(r1 r2) (32 at alpha 16, 8 at alpha 8), which Adam's
#: scale-free steps do not cancel: it is swept with the learning rate.
EXTRA_GRID = {"abba": {"peft.alpha": ("8", "16")}}


@dataclass(frozen=True)
class Size:
    """One scale of the experiment: what is trained, on what, and where it goes."""
    name: str
    methods: tuple[str, ...]
    seeds: dict[str, tuple[int, ...]]
    benchmarks: tuple[tuple[str, int | None], ...]      # (benchmark, items: None = all)
    output_root: str
    results_dir: str
    train_overrides: tuple[str, ...] = ()
    sweep: bool = True
    fixed: dict[str, tuple[str, ...]] = field(default_factory=dict)   # overrides when sweep=False
    eval_batch_size: int = 32


#: MINI_BENCHMARKS (tests/test_table_registry.py) in evaluation order, with the items evaluated (None: all).
FOUR = (("ARC-Challenge", 300), ("ARC-Easy", 300), ("boolq", 300), ("openbookqa", None))
SIZES = {
    "cpu": Size("cpu", METHODS, {"abba": (0, 1, 2), "lora": (0, 1, 2)}, FOUR, "outputs/mini", "results/mini"),
    # The quickstart: ABBA vs LoRA on ARC-Easy only, 512 records (32 steps), 200 test items, fixed settings (lr
    # 1e-3 for both, ABBA alpha 16: no sweep, to stay within minutes). scripts/quickstart.sh's knobs (environment): QUICKSTART_OUT moves
    # <out>/runs and <out>/results; QUICKSTART_TRAIN (records), _BATCH (sequences per step), _HELDOUT (held-out
    # records) and _ITEMS (test items) shrink it for tests/test_quickstart.py.
    "quick": Size("quick", ("abba", "lora"), {}, (("ARC-Easy", int(os.environ.get("QUICKSTART_ITEMS") or 200)),),
                  f"{os.environ.get('QUICKSTART_OUT') or 'outputs/quickstart'}/runs",
                  f"{os.environ.get('QUICKSTART_OUT') or 'outputs/quickstart'}/results", sweep=False,
                  train_overrides=(f"data.subset_size={int(os.environ.get('QUICKSTART_TRAIN') or 512)}",
                                   f"data.heldout_size={int(os.environ.get('QUICKSTART_HELDOUT') or 128)}",
                                   "data.name=arc_easy_local",
                                   "data.path=[${paths.data_dir}/commonsense_train/ARC-Easy/train.json]",
                                   *([f"trainer.per_device_train_batch_size={int(os.environ['QUICKSTART_BATCH'])}"]
                                     if os.environ.get("QUICKSTART_BATCH") else [])),
                  fixed={"abba": ("peft.lr=0.001", "peft.alpha=16"), "lora": ("peft.lr=0.001",)}),
    # A GPU: every local training record but the held-out 256, the four test sets in full, ABBA and LoRA at the
    # CPU sweep's choice (scripts/gpu_check.sh).
    "full": Size("full", ("abba", "lora"), {}, tuple((b, None) for b, _ in FOUR), "outputs/mini_gpu",
                 "results/mini_gpu", sweep=False, train_overrides=("data.subset_size=17498",), eval_batch_size=64),
}


def experiment(method: str) -> str:
    return f"m1_smollm2_{method}"


@dataclass
class Job:
    """One training run and (for a final run) its evaluation."""
    method: str
    seed: int
    overrides: tuple[str, ...]           # the setting's overrides (peft.lr=..., ...), named in the run folder
    size: Size
    final: bool

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "abba.train", f"experiment={experiment(self.method)}", f"seed={self.seed}",
                "resume=true", hydra_arg("paths.output_root", self.size.output_root), *self.size.train_overrides,
                *self.overrides]

    @property
    def run_dir(self) -> Path:
        named = [*self.size.train_overrides, *self.overrides]
        return Path(default_run_dir(self.size.output_root, experiment(self.method), self.seed, named))

    @property
    def results_dir(self) -> Path:
        return Path(self.size.results_dir) / experiment(self.method) / f"seed{self.seed}"

    @property
    def trained(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def record_dir(self) -> Path:
        """Where a sweep run's record is kept under results (committed; its run folder under outputs is not):
        <results>/sweep/<experiment>/seed<k>/<overrides>/."""
        return Path(self.size.results_dir) / "sweep" / experiment(self.method) / f"seed{self.seed}" / \
            ",".join(self.overrides)

    @property
    def heldout_nll(self) -> float | None:
        """The sweep run's held-out NLL from its record (or its finished run folder); None if not trained."""
        for folder, usable in ((self.record_dir, True), (self.run_dir, self.trained)):
            info = folder / "run_info.json"
            if usable and info.is_file():
                value = json.loads(info.read_text()).get("heldout_nll")
                if value is not None:
                    return float(value)
        return None

    def keep_record(self) -> None:
        """Copy what the choice rests on (config, run_info, held-out NLL, loss curve) into record_dir."""
        self.record_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "run_info.json", "heldout_nll.json", "metrics.jsonl"):
            if (self.run_dir / name).is_file():
                shutil.copy2(self.run_dir / name, self.record_dir / name)

    @property
    def evaluated(self) -> bool:
        return evaluated(self.results_dir, self.size)

    def describe(self) -> str:
        state = "trained" if self.trained or (not self.final and self.heldout_nll is not None) else "to train"
        if self.final:
            state += ", evaluated" if self.evaluated else ", to evaluate"
        return f"{experiment(self.method)} seed={self.seed} {' '.join(self.overrides) or '(defaults)'}: {state}"


def evaluated(results_dir: Path, size: Size) -> bool:
    path = results_dir / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())
    return all(b in metrics and metrics[b].get("nll") is not None for b, _ in size.benchmarks)


def grid(method: str) -> list[tuple[str, ...]]:
    points: list[tuple[str, ...]] = [(f"peft.lr={lr}",) for lr in LR_GRID]
    for key, values in EXTRA_GRID.get(method, {}).items():
        points = [(*p, f"{key}={v}") for p in points for v in values]
    return [tuple(sorted(p)) for p in points]


def sweep_jobs(method: str, size: Size) -> list[Job]:
    return [Job(method, 0, point, size, final=False) for point in grid(method)]


def select(method: str, size: Size) -> tuple[str, ...] | None:
    """The sweep point with the lowest held-out NLL (None while any point has no result yet)."""
    if not size.sweep:
        return tuple(size.fixed.get(method) or selection_from_file(method))
    scores = {job.overrides: job.heldout_nll for job in sweep_jobs(method, size)}
    if any(v is None for v in scores.values()):
        return None
    return min(scores, key=scores.get)


def selection_from_file(method: str) -> tuple[str, ...]:
    """The CPU sweep's committed choice (results/mini/selection.json), for sizes that do not sweep."""
    path = REPO_ROOT / SIZES["cpu"].results_dir / "selection.json"
    chosen = json.loads(path.read_text()).get(method, {}).get("overrides") if path.is_file() else None
    if not chosen:
        raise SystemExit(f"error: no chosen setting for {method} in {path}: run the CPU sweep first "
                         "(bash scripts/reproduce.sh mini)")
    return tuple(chosen)


def write_selection(size: Size) -> None:
    """<results>/selection.{json,md}: every sweep point's held-out NLL and the choice, per method."""
    record, lines = {}, ["# Mini reproduction: hyperparameter choice by held-out NLL", "",
                         "Each point: seed 0, the full mini budget; NLL (nats/token) of 256 training records outside "
                         "the training subset. The lowest is chosen; no test item is used.", "",
                         "| method | setting | held-out NLL | chosen |", "|---|---|---|---|"]
    for method in size.methods:
        scores = {j.overrides: j.heldout_nll for j in sweep_jobs(method, size) if j.heldout_nll is not None}
        if not scores:
            continue
        chosen = select(method, size)
        record[method] = {"points": [{"overrides": list(k), "heldout_nll": v} for k, v in scores.items()],
                          "overrides": list(chosen) if chosen else None}
        for k, v in scores.items():
            lines.append(f"| {method} | {' '.join(k)} | {v:.4f} | {'**yes**' if k == chosen else ''} |")
    Path(size.results_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(size.results_dir) / "selection.json", record)
    write_text(Path(size.results_dir) / "selection.md", "\n".join(lines) + "\n")


def plan(size: Size) -> list[Job]:
    """Every job in the order it runs: per method, its sweep, then the chosen setting for each seed."""
    jobs: list[Job] = []
    for method in size.methods:
        if size.sweep:
            jobs += sweep_jobs(method, size)
        chosen = select(method, size)
        for seed in size.seeds.get(method, (0,)):
            if chosen is None:  # not chosen yet: the final runs are listed once the sweep is done
                jobs.append(Job(method, seed, ("<chosen by the sweep>",), size, final=True))
            else:
                jobs.append(Job(method, seed, chosen, size, final=True))
    return jobs


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
    out = job.results_dir
    merged = out / "merged"
    if not (merged / "merge_info.json").is_file():
        _run([sys.executable, "-m", "abba.merge", f"adapter_dir={job.run_dir / 'final'}", f"output_dir={merged}",
              "overwrite=true"])
    evaluate(merged, out, job.size)
    for name in ("config.yaml", "run_info.json", "heldout_nll.json"):
        if (job.run_dir / name).is_file():
            shutil.copy2(job.run_dir / name, out / name)
    shutil.rmtree(merged)


def evaluate_base(size: Size) -> Path:
    """The untuned model into <results>/m1_smollm2_base/seed0, with a config.yaml/run_info.json describing it."""
    import yaml

    from .base_model import build_model, pretrained_folder

    entry = yaml.safe_load((REPO_ROOT / "configs" / "model" / "smollm2_135m.yaml").read_text())
    out = Path(size.results_dir) / experiment("base") / "seed0"
    if evaluated(out, size):
        return out
    folder = pretrained_folder(entry)
    evaluate(Path(folder), out, size)
    total = sum(p.numel() for p in build_model(entry).parameters())
    config = {"experiment_name": experiment("base"), "seed": 0, "table": "mini", "model": entry,
              "peft": {"method": "base"}, "note": "the untuned model (no training)"}
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(out / "run_info.json", run_info(experiment("base"), 0, "base", 1, 0, total, table="mini",
                                               finished=True))
    return out


def print_plan(size: Size, jobs: Iterable[Job]) -> None:
    jobs = list(jobs)
    base = Path(size.results_dir) / experiment("base") / "seed0"
    print(f"# mini reproduction, size {size.name}: {len(jobs)} training runs; results in {size.results_dir}")
    print(f"base (untuned): {'evaluated' if evaluated(base, size) else 'to evaluate'}")
    for job in jobs:
        print(("final " if job.final else "sweep ") + job.describe())
    items = ", ".join(f"{b} ({n or 'all'} items)" for b, n in size.benchmarks)
    print(f"# benchmarks: {items}")


def stages(size: Size) -> list[tuple[str, list[str]]]:
    """(stage, methods) in the order they run: ABBA and LoRA head to head first (sweeps, then seed by seed), then
    each other baseline's sweep and runs, so an interrupted run has the most useful comparison finished."""
    pair = [m for m in size.methods if m in ("abba", "lora")]
    order: list[tuple[str, list[str]]] = [("sweep", pair)] if size.sweep else []
    seeds = sorted({s for m in pair for s in size.seeds.get(m, (0,))})
    order += [(f"seed{s}", [m for m in pair if s in size.seeds.get(m, (0,))]) for s in seeds]
    for method in (m for m in size.methods if m not in pair):
        order += ([("sweep", [method])] if size.sweep else []) + [
            (f"seed{s}", [method]) for s in size.seeds.get(method, (0,))]
    return order


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what is done; run nothing")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the size's methods")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.methods:
        unknown = set(args.methods.split(",")) - set(size.methods)
        if unknown:
            parser.error(f"unknown method(s) {', '.join(sorted(unknown))} for size {size.name}; "
                         f"methods: {', '.join(size.methods)}")
        size = Size(**{**size.__dict__, "methods": tuple(m for m in size.methods if m in args.methods.split(","))})
    if args.dry_run:
        print_plan(size, plan(size))
        return 0
    from filelock import FileLock, Timeout

    Path(size.results_dir).mkdir(parents=True, exist_ok=True)
    try:  # two drivers on one results folder would train the same run folders twice
        lock = FileLock(str(Path(size.results_dir) / ".mini.lock"), timeout=0).acquire()
    except Timeout:
        print(f"error: another abba.mini is running on {size.results_dir} (lock {size.results_dir}/.mini.lock)",
              file=sys.stderr)
        return 2
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
        tables_dir = Path(size.results_dir).parent / "tables" if size.name == "cpu" else Path(size.results_dir) / "tables"
        _run([sys.executable, "-m", "abba.tables", f"results_dir={size.results_dir}", f"output_dir={tables_dir}",
              "tables=mini"])
    if failed:
        print(f"abba.mini: {len(failed)} stage(s) did not finish: {', '.join(failed)} (re-run to resume)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
