"""The mini table for abba.tables (see its docstring): rows per method in mini_order, accuracy and held-out NLL
per benchmark, the majority-answer reference row, and the header line; rendered by abba.table_mini_render.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .table_cells import Row, first_params, method_label, seed_cells
from .table_registry import MINI_BENCHMARKS, MINI_METHOD_ORDER, PAPER_BASELINE_RANK
from .table_runs import RunResult

log = logging.getLogger("abba.tables")

MINI_METRICS = ("accuracy", "nll")
MINI_CSV_FIELDS = ("table", "model", "method", "method_label", "benchmark", "metric", "n_seeds", "mean", "std",
                   "params")
_METHOD_KEY = re.compile(r"^(?P<family>.+?)(?:_r(?P<rank>\d+))?(?P<official>_official)?$")


def mini_order(key: str) -> tuple:
    """Sort key of a mini row: Base, ABBA, then the baselines in MINI_METHOD_ORDER, then anything else."""
    match = _METHOD_KEY.match(key)
    family = match["family"]
    position = MINI_METHOD_ORDER.index(family) if family in MINI_METHOD_ORDER else len(MINI_METHOD_ORDER)
    rank = int(match["rank"]) if match["rank"] else PAPER_BASELINE_RANK
    return position, family, rank, bool(match["official"]), key


def _mini_columns() -> list[tuple[str, str]]:
    """(metric, benchmark) of each number column: accuracy and NLL per benchmark, then their Avg."""
    return [(metric, bench) for bench in (*MINI_BENCHMARKS, "avg") for metric in MINI_METRICS]


def _metric_values(run: RunResult, metric: str) -> dict[str, float]:
    return run.scores if metric == "accuracy" else run.nll


def build_mini_rows(model: str, runs: list[RunResult]) -> list[Row]:
    """One row per method of `model` (mini_order), cells keyed '<metric>:<benchmark>' (benchmark incl. avg)."""
    mine_all = [r for r in runs if r.model == model]
    rows = []
    for key in sorted({r.method for r in mine_all}, key=mini_order):
        mine = sorted((r for r in mine_all if r.method == key), key=lambda r: r.seed)
        row = Row(key, method_label(key), seeds=[r.seed for r in mine])
        for metric in MINI_METRICS:
            cells = seed_cells([_metric_values(r, metric) for r in mine], MINI_BENCHMARKS, avg=True)
            row.cells.update({f"{metric}:{bench}": stat for bench, stat in cells.items()})
        row.params = first_params(mine, f"mini {model}/{key}")
        rows.append(row)
    return rows


@dataclass
class Majority:
    """The majority-answer reference of one block: per benchmark the share (%) of the most frequent gold."""
    rate: dict[str, float] = field(default_factory=dict)     # benchmark (and avg) -> %
    n_items: dict[str, int] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)     # benchmark -> the samples file used
    disagree: dict[str, list[str]] = field(default_factory=dict)  # benchmark -> samples files with other items


def read_golds(path: Path) -> dict[str, str]:
    """{id: gold (as JSON text)} of a samples_<benchmark>.jsonl, read only (bad or torn lines skipped)."""
    golds: dict[str, str] = {}
    bad = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            golds[str(record["id"])] = json.dumps(record["gold"], sort_keys=True)
        except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("%s: %d line(s) without a JSON record with id and gold were skipped", path, bad)
    return golds


def majority_answers(runs: list[RunResult]) -> Majority:
    """Majority-answer rates from the samples files beside the runs' metrics.json (the first run by path that
    has the benchmark and its samples file; runs whose items or golds differ are warned about)."""
    majority = Majority()
    for bench in MINI_BENCHMARKS:
        first: tuple[Path, dict[str, str]] | None = None
        for run in sorted((r for r in runs if bench in r.scores), key=lambda r: r.path):
            path = Path(run.path).parent / f"samples_{bench}.jsonl"
            if not path.is_file():
                continue
            golds = read_golds(path)
            if not golds:
                continue
            if first is None:
                first = path, golds
                n = run.n_items.get(bench)
                if n is not None and n != len(golds):
                    log.warning("%s holds %d items, its metrics.json n=%d: the majority answer counts the file's",
                                path, len(golds), n)
                counts: dict[str, int] = {}
                for gold in golds.values():
                    counts[gold] = counts.get(gold, 0) + 1
                majority.rate[bench] = 100.0 * max(counts.values()) / len(golds)
                majority.n_items[bench] = len(golds)
                majority.source[bench] = str(path)
            elif golds != first[1]:
                common = set(golds) & set(first[1])
                same_gold = sum(golds[i] == first[1][i] for i in common)
                log.warning("majority answer of %s: %s has other items than %s (%d vs %d items, %d in common, %d "
                            "with the same gold); using the first", bench, path, first[0], len(golds), len(first[1]),
                            len(common), same_gold)
                majority.disagree.setdefault(bench, []).append(str(path))
    if all(b in majority.rate for b in MINI_BENCHMARKS):
        majority.rate["avg"] = statistics.fmean(majority.rate[b] for b in MINI_BENCHMARKS)
    return majority
