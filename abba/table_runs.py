"""Reading evaluated runs for abba.tables: every metrics.json under a results folder, with the config.yaml and
run_info.json beside it, becomes a RunResult in its cell (table, model, method key, sweep member, seed).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .layout import is_partial
from .table_registry import METHOD_ALIASES, PAPER_BASELINE_RANK

log = logging.getLogger("abba.tables")


class TablesError(ValueError):
    """Bad input to the table builder; the message is one line."""


@dataclass
class RunResult:
    """One evaluated run: which cell group it belongs to and its accuracies in %."""
    table: str
    model: str
    method: str
    seed: int
    scores: dict[str, float]
    trainable_params: int | None = None
    git_commit: str | None = None
    hardware: str | None = None
    path: str = ""
    nll: dict[str, float] = field(default_factory=dict)  # metrics.json `nll` (nats/token) per benchmark
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    n_items: dict[str, int] = field(default_factory=dict)  # metrics.json `n` per benchmark
    variant: str = ""  # the results folder's part after seed<k> (a sweep member's overrides), "" for the plain run
    partial: dict[str, str] = field(default_factory=dict)  # benchmark -> why it is not the full test set


def method_key(cfg: dict[str, Any]) -> str:
    """The row key of a run from its resolved config (see the module docstring for the rule)."""
    peft = cfg.get("peft") or {}
    method = peft.get("method")
    if method is None:
        raise TablesError("config has no peft.method")
    official = bool(cfg.get("official_code")) or peft.get("scaling") == "official"
    method = METHOD_ALIASES.get(method, method)
    if method == "abba":
        key = f"abba_r{int(peft['r1']) + int(peft['r2'])}"
    elif method == "full" or peft.get("r") is None:
        key = method
    elif int(peft["r"]) == PAPER_BASELINE_RANK:
        key = method
    else:
        key = f"{method}_r{int(peft['r'])}"
    return key + ("_official" if official else "")


_EXPERIMENT = re.compile(r"^t(?P<table>[12])_(?P<rest>.+)$")


def parse_experiment_name(name: str, models: list[str]) -> tuple[str, str, str] | None:
    """(table, model, method) from a name like t1_llama3_2_1b_abba_r32, given the known model names."""
    match = _EXPERIMENT.match(name or "")
    if not match:
        return None
    rest = match["rest"]
    for model in sorted(models, key=len, reverse=True):
        if rest.startswith(model + "_"):
            method = rest[len(model) + 1:]
            return f"table{match['table']}", model, METHOD_ALIASES.get(method, method)
    return None


def _hardware_label(info: dict[str, Any]) -> str | None:
    hw = info.get("hardware") or {}
    gpus = hw.get("gpus")
    if gpus:
        names = sorted(set(gpus))
        return ", ".join(f"{gpus.count(n)}x {n}" for n in names)
    if hw:
        return f"CPU ({hw.get('cpu_count')} cores)"
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def variant_of(metrics_path: Path) -> str:
    """The results folder's components after `seed<k>`: a sweep member's overrides (abba.merge_eval keeps the run
    folder's name there), so two members of one sweep are two rows, never one mean."""
    parts = metrics_path.parent.parts
    seeds = [i for i, part in enumerate(parts) if re.fullmatch(r"seed\d+", part)]
    return "/".join(parts[seeds[-1] + 1:]) if seeds else ""


def load_run(metrics_path: Path, models: list[str]) -> list[RunResult]:
    """The results in one metrics.json (one RunResult; [] when its row cannot be told, with a warning)."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TablesError(f"cannot read {metrics_path}: {exc}") from None
    cfg = _read_yaml(metrics_path.parent / "config.yaml")
    info_path = metrics_path.parent / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    name = cfg.get("experiment_name") or info.get("experiment_name") or ""
    if cfg.get("peft") and cfg.get("model"):
        table, model, method = cfg.get("table") or "other", cfg["model"]["name"], method_key(cfg)
    elif (parsed := parse_experiment_name(name, models)) is not None:
        table, model, method = parsed
    else:
        log.warning("skipping %s: no config.yaml beside it and no t<N>_<model>_<method> experiment name",
                    metrics_path)
        return []
    seed = cfg.get("seed", info.get("seed"))
    if seed is None:
        match = re.search(r"seed(\d+)", str(metrics_path))
        seed = int(match[1]) if match else 0
    scores, nll, n_items = {}, {}, {}
    for bench, entry in metrics.items():
        if isinstance(entry, dict) and entry.get("accuracy") is not None:
            scores[bench] = 100.0 * float(entry["accuracy"])
        if isinstance(entry, dict) and entry.get("nll") is not None:
            nll[bench] = float(entry["nll"])
        if isinstance(entry, dict) and entry.get("n") is not None:
            n_items[bench] = int(entry["n"])
    partial = {bench: f"{entry.get('n')} items (limit={entry['limit']}, subset={entry.get('subset', 'first')})"
               for bench, entry in metrics.items() if isinstance(entry, dict) and is_partial(entry)}
    commit = info.get("git_commit") or next((e.get("git_commit") for e in metrics.values()
                                             if isinstance(e, dict) and e.get("git_commit")), None)
    return [RunResult(table, model, method, int(seed), scores, info.get("trainable_params"), commit,
                      _hardware_label(info), str(metrics_path), nll, cfg, info, n_items, variant_of(metrics_path),
                      partial)]


def collect_runs(results_dir: Path, models: list[str], exclude: Path | None = None) -> list[RunResult]:
    """Every run under `results_dir` (sorted by path; a repeated (table, model, method, seed) keeps the first)."""
    if not results_dir.is_dir():
        raise TablesError(f"results_dir {results_dir} does not exist")
    runs: list[RunResult] = []
    seen: dict[tuple, str] = {}
    for path in sorted(results_dir.rglob("metrics.json")):
        if exclude is not None and exclude.resolve() in path.resolve().parents:
            continue
        for run in load_run(path, models):
            key = (run.table, run.model, run.method, run.variant, run.seed)
            if key in seen:  # two results folders claim one cell: a mean over them would mix two runs
                raise TablesError(f"{seen[key]} and {path} are both {run.method} seed {run.seed} of {run.model} "
                                  f"({run.table}): move one out of {results_dir} or evaluate it into its run's "
                                  f"own results folder")
            seen[key] = str(path)
            runs.append(run)
    return runs
