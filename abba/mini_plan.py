"""The mini reproduction's plan (abba.mini runs it): its sizes, the learning-rate grid, the jobs each size trains
and evaluates, the sweep's choice by held-out NLL, and the order the stages run in.

A job's run folder is abba.layout's (`default_run_dir`, named after the setting's overrides); its results folder
is `<results>/<experiment>/seed<k>` (`seed_folder`, no override suffix: one setting per method and seed); a sweep
point's record (what the choice rests on, committed) is `<results>/sweep/<experiment>/seed<k>/<overrides>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .cli import Refusal, UsageError, hydra_arg
from .files import atomic_path, write_json, write_text
from .layout import REPO_ROOT, default_run_dir, is_evaluated, is_finished, seed_folder, sweep_record_folder
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
    # 1e-3 for both, ABBA alpha 16: no sweep, to stay within minutes). scripts/quickstart.sh's knobs (environment):
    # QUICKSTART_OUT moves <out>/runs and <out>/results; QUICKSTART_TRAIN (records), _BATCH (sequences per step),
    # _HELDOUT (held-out records) and _ITEMS (test items) shrink it for tests/test_quickstart.py.
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


def evaluated(results_dir: Path, size: Size) -> bool:
    """Whether results_dir/metrics.json scores every benchmark of the size with an NLL (abba.layout.is_evaluated;
    a seeded subset, limit=N, is the size's own protocol, so it counts as done)."""
    return is_evaluated(results_dir, [b for b, _ in size.benchmarks], nll=True, partial_ok=True)


def copy_files(names: Iterable[str], source: Path, target: Path) -> None:
    """Copy each file `names` lists from `source` into `target` (metadata kept), each atomically; a missing one is
    skipped."""
    for name in names:
        if (source / name).is_file():
            with atomic_path(target / name) as tmp:
                shutil.copy2(source / name, tmp)


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
        return seed_folder(self.size.results_dir, experiment(self.method), self.seed)

    @property
    def trained(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def record_dir(self) -> Path:
        """Where a sweep run's record is kept under results (committed; its run folder under outputs is not):
        <results>/sweep/<experiment>/seed<k>/<overrides>/."""
        return sweep_record_folder(self.size.results_dir, experiment(self.method), self.seed, self.overrides)

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
        copy_files(("config.yaml", "run_info.json", "heldout_nll.json", "metrics.jsonl"), self.run_dir,
                   self.record_dir)

    @property
    def evaluated(self) -> bool:
        return evaluated(self.results_dir, self.size)

    def describe(self) -> str:
        state = "trained" if self.trained or (not self.final and self.heldout_nll is not None) else "to train"
        if self.final:
            state += ", evaluated" if self.evaluated else ", to evaluate"
        return f"{experiment(self.method)} seed={self.seed} {' '.join(self.overrides) or '(defaults)'}: {state}"


def grid(method: str) -> list[tuple[str, ...]]:
    points: list[tuple[str, ...]] = [(f"peft.lr={lr}",) for lr in LR_GRID]
    for key, values in EXTRA_GRID.get(method, {}).items():
        points = [(*p, f"{key}={v}") for p in points for v in values]
    return [tuple(sorted(p)) for p in points]


def sweep_jobs(method: str, size: Size) -> list[Job]:
    return [Job(method, 0, point, size, final=False) for point in grid(method)]


def select(method: str, size: Size) -> tuple[str, ...] | None:
    """The sweep point with the lowest held-out NLL (None while any point has no result yet). Raises Refusal
    (selection_from_file) for a size without a sweep when the CPU sweep has not chosen yet."""
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
        raise Refusal(f"no chosen setting for {method} in {path}: run the CPU sweep first "
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


def only_methods(size: Size, methods: str) -> Size:
    """The size limited to a comma-separated subset of its methods ("" keeps them all). Raises UsageError for a
    method the size does not train."""
    if not methods:
        return size
    unknown = set(methods.split(",")) - set(size.methods)
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(sorted(unknown))} for size {size.name}; "
                         f"methods: {', '.join(size.methods)}")
    return dataclasses.replace(size, methods=tuple(m for m in size.methods if m in methods.split(",")))


def print_plan(size: Size, jobs: Iterable[Job]) -> None:
    jobs = list(jobs)
    base = seed_folder(size.results_dir, experiment("base"), 0)
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
