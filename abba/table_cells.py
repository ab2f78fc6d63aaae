"""Aggregating runs into table cells for abba.tables: mean ± sample std over seeds, the Avg column, and the
rows of a table (the paper's in its order, then sweep members and other methods).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

from .table_registry import METHOD_LABELS
from .table_runs import RunResult

log = logging.getLogger("abba.tables")


@dataclass
class Stat:
    mean: float | None = None
    std: float | None = None
    n: int = 0
    values: tuple[float, ...] = ()  # the per-seed numbers (figures)


@dataclass
class Row:
    method: str
    label: str
    cells: dict[str, Stat] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    paper_params: str | None = None
    seeds: list[int] = field(default_factory=list)
    variant: str = ""
    partial: set[str] = field(default_factory=set)  # columns with a partial evaluation in any seed (avg included)


def mean_std(values: list[float]) -> Stat:
    if not values:
        return Stat()
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values),
                tuple(values))


def method_label(key: str) -> str:
    base, _, rest = key.partition("_r")
    if base in METHOD_LABELS and rest and rest.split("_")[0].isdigit():
        suffix = " (official code)" if key.endswith("_official") else ""
        return f"{METHOD_LABELS[base]} r={rest.split('_')[0]}{suffix}"
    return METHOD_LABELS.get(key, key)


def table_spec(name: str, reference: dict[str, Any], runs: list[RunResult]) -> dict[str, Any]:
    """Benchmarks, models and their paper rows for table `name` (`other`: whatever the runs hold)."""
    spec = reference.get("tables", {}).get(name)
    if spec is not None:
        return {"title": spec["title"], "citation": spec["citation"], "benchmarks": list(spec["benchmarks"]),
                "avg": name == "table1", "models": spec["models"]}
    benchmarks = sorted({b for r in runs for b in r.scores})
    models = {r.model: {"label": r.model, "methods": {}} for r in runs}
    return {"title": "Other runs (not rows of the paper's tables)", "citation": None, "benchmarks": benchmarks,
            "avg": False, "models": models}


def seed_cells(per_run: list[dict[str, float]], benchmarks, avg: bool) -> dict[str, Any]:
    """{benchmark: mean ± std over the runs that have it} and, with `avg`, {"avg": mean ± std of each complete run's
    mean over `benchmarks`} (a run missing any benchmark is left out of the average)."""
    cells = {b: mean_std([v[b] for v in per_run if b in v]) for b in benchmarks}
    if avg:
        complete = [v for v in per_run if all(b in v for b in benchmarks)]
        cells["avg"] = mean_std([statistics.fmean(v[b] for b in benchmarks) for v in complete])
    return cells


def first_params(runs: list, what: str) -> int | None:
    """The runs' trainable-parameter count (the first; a warning when they disagree)."""
    params = [r.trainable_params for r in runs if r.trainable_params is not None]
    if len(set(params)) > 1:
        log.warning("%s: runs disagree on trainable parameters %s; showing the first", what, params)
    return params[0] if params else None


def build_rows(spec: dict[str, Any], model: str, runs: list[RunResult]) -> list[Row]:
    """The paper's rows in the paper's order, then any other method we ran, each with its cells."""
    paper_methods = spec["models"].get(model, {}).get("methods", {})
    ours = {(r.method, r.variant) for r in runs if r.model == model}
    # The paper's rows in its order (our plain runs in them), then sweep members and other methods as own rows.
    keys = [(m, "") for m in paper_methods] + sorted(ours - {(m, "") for m in paper_methods})
    rows = []
    for key, variant in keys:
        paper = paper_methods.get(key, {}) if not variant else {}
        mine = sorted((r for r in runs if r.model == model and r.method == key and r.variant == variant),
                      key=lambda r: r.seed)
        label = paper.get("label") or method_label(key)
        row = Row(key, f"{label} ({variant})" if variant else label, paper_params=paper.get("params"),
                  paper={b: float(paper[b]) for b in spec["benchmarks"] + ["avg"] if b in paper},
                  seeds=[r.seed for r in mine], variant=variant)
        row.cells.update(seed_cells([r.scores for r in mine], spec["benchmarks"], spec["avg"]))
        row.partial = {b for r in mine for b in r.partial if b in spec["benchmarks"]}
        if row.partial and spec["avg"]:
            row.partial.add("avg")
        row.params = first_params(mine, f"{model}/{key}")
        rows.append(row)
    return rows
