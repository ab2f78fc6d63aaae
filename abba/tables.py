"""Rebuild the paper's Tables 1 and 2 from our evaluated runs, beside the paper's numbers.

    python -m abba.tables results_dir=results output_dir=results/tables
    python -m abba.tables results_dir=outputs/quickstart/results output_dir=outputs/quickstart/tables tables=other
    python -m abba.tables results_dir=results/mini output_dir=results/tables tables=mini

Reads every `metrics.json` under `results_dir` (written by eval.run / scripts/*_merge_eval.sh) with the
`config.yaml` and `run_info.json` copied beside it, and the paper's numbers from results/paper_reference.yaml.
Writes `<table>.md`, `<table>.tex` (booktabs), `<table>.csv` and, with plots=true (default), `<table>.png`
for table1 (commonsense), table2 (arithmetic), `mini` (runs whose config has `table: mini`; see below) and
`other` (runs whose config has `table: null`); `tables=table1,table2` limits them. `mini` and `other` are
written only when they have runs.

Which row a run lands in (`method_key`): `peft.method` names it; ABBA adds its rank r = r1 + r2 (the paper's
"ABBA r=32" is r1 = r2 = 16: the parameters of LoRA r=32), so abba_r16 / abba_r32; a baseline at the paper's
rank 32 is just its method (lora, dora, ...), at another rank `<method>_r<r>`; the released-code variant
(official_code=true or peft.scaling=official) gets `_official`. The table is the config's `table`, the model
its `model.name`. Without a usable config the experiment name t<N>_<model>_<method key> is parsed instead.

A cell is our mean ± sample std (ddof 1) over seeds in %, then (paper; ours − paper). Avg: per seed, the mean
over the table's benchmarks (seeds missing any benchmark are left out), then mean ± std over seeds.
Missing numbers are "–" (empty in the CSV), never 0.
A results folder below `seed<k>` (a sweep member: eval.merge_eval names it after the run folder) is its own
row, labelled with that name, never averaged with the plain run. Two results folders that claim the same cell
(table, model, method, sweep member, seed) are refused with one line. A benchmark evaluated with `limit`
(metrics.json) is partial: its cells carry "†" and the table lists which runs and items.

`mini` (no paper numbers, so no paper/difference columns): a CPU-sized run of Table 1's protocol, e.g.
SmolLM2-135M-Instruct with ABBA and baselines at the same parameter budget plus the untuned base model
(`peft.method: base`, 0 trainable parameters), on MINI_BENCHMARKS. Per benchmark two columns, accuracy (%) and
held-out NLL (metrics.json `nll`: teacher-forced nats per token of the gold responses, lower is better), each
mean ± std over seeds, plus their Avg over the four benchmarks as above (seeds missing any benchmark's number
left out). Rows: Base first, ABBA, then the baselines in MINI_METHOD_ORDER. A reference row "Majority answer"
gives, per benchmark, the share (%) of the most frequent `gold` among the evaluated items, read from
`samples_<benchmark>.jsonl` beside the runs' metrics.json (the first run, by path, that has one; another run
whose items or golds differ is named in a warning). The header line names the model, the training budget
(run_info.json n_train_examples / global_step, config trainer batch) and the evaluated item counts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .modeling import REPO_ROOT
from .run_folder import write_atomic

log = logging.getLogger("abba.tables")

MISSING = "–"
PARTIAL = "†"  # marks a cell evaluated on a subset of its test set (eval.run limit=N)
PAPER_BASELINE_RANK = 32  # every baseline row of paper v4 Tables 1-2 uses rank 32
DEFAULT_REFERENCE = REPO_ROOT / "results" / "paper_reference.yaml"
BENCHMARK_LABELS = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaSwag",
                    "winogrande": "WinoGrande", "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c",
                    "openbookqa": "OBQA", "gsm8k": "GSM8K", "math": "MATH", "avg": "Avg"}
METHOD_LABELS = {"full": "Full FT", "lora": "LoRA", "rslora": "rsLoRA", "pissa": "PiSSA", "dora": "DoRA",
                 "hira": "HiRA", "loha": "LoHa", "abba": "ABBA", "lora_pro": "LoRA-Pro", "base": "Base (untuned)"}
#: peft.method values whose paper row key differs: configs/peft/lorapro.yaml is the paper's "lora_pro" row.
METHOD_ALIASES = {"lorapro": "lora_pro"}
TABLE_ORDER = ("table1", "table2", "mini", "other")
MINI_BENCHMARKS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")  # Table 1's order
MINI_METHOD_ORDER = ("base", "abba", "lora", "rslora", "pissa", "dora", "hira", "loha", "full", "lora_pro")
MINI_TITLE = "Mini reproduction of Table 1's protocol: commonsense accuracy (%) and held-out NLL (nats/token)"


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


# ---------------------------------------------------------------- reading runs

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


def is_partial(entry: dict[str, Any]) -> bool:
    """Whether a metrics.json entry scores a subset of its test set: `limit` was given and that many items were
    scored (a limit above the set's size scores all of it)."""
    limit = entry.get("limit")
    return limit is not None and (entry.get("n") is None or int(entry["n"]) >= int(limit))


def variant_of(metrics_path: Path) -> str:
    """The results folder's components after `seed<k>`: a sweep member's overrides (eval.merge_eval keeps the run
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


# ---------------------------------------------------------------- aggregating

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


# ---------------------------------------------------------------- rendering

def format_params(n: int | None) -> str:
    if n is None:
        return MISSING
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def format_cell(stat: Stat, paper: float | None) -> str:
    """'71.20 ± 0.35 (71.83; -0.63)'; '– (71.83)' without our runs; std left out for one seed."""
    if stat.mean is None:
        ours = MISSING
    else:
        ours = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.std is not None else "")
    if paper is None:
        return ours
    if stat.mean is None:
        return f"{ours} ({paper:.2f})"
    return f"{ours} ({paper:.2f}; {stat.mean - paper:+.2f})"


def _columns(spec: dict[str, Any]) -> list[str]:
    return spec["benchmarks"] + (["avg"] if spec["avg"] else [])


def _provenance(runs: list[RunResult]) -> str:
    commits = sorted({r.git_commit[:10] + ("+dirty" if r.git_commit.endswith("+dirty") else "")
                      for r in runs if r.git_commit})
    hardware = sorted({r.hardware for r in runs if r.hardware})
    return (f"{len(runs)} evaluated runs; commits: {', '.join(commits) or MISSING}; "
            f"hardware: {'; '.join(hardware) or MISSING}.")


def render_markdown(name: str, spec: dict[str, Any], blocks: dict[str, list[Row]], runs: list[RunResult]) -> str:
    cols = _columns(spec)
    cite = f" vs the paper ({spec['citation']})" if spec["citation"] else ""
    lines = [f"## {name}: {spec['title']}{cite}", "",
             "Cell: ours, mean ± std over seeds (paper; ours − paper). \"–\": no run or no paper number. "
             "Params: our trainable parameters (paper's).", "", _provenance(runs), ""]
    for model, rows in blocks.items():
        lines += [f"### {spec['models'][model]['label']}", "",
                  "| Method | Params | Seeds | " + " | ".join(BENCHMARK_LABELS.get(c, c) for c in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for row in rows:
            params = format_params(row.params) + (f" ({row.paper_params})" if row.paper_params else "")
            cells = [format_cell(row.cells[c], row.paper.get(c)) + (f" {PARTIAL}" if c in row.partial else "")
                     for c in cols]
            lines.append(f"| {row.label} | {params} | {len(row.seeds)} | " + " | ".join(cells) + " |")
        lines.append("")
    partial = sorted({f"{r.path}: {bench} {why}" for r in runs for bench, why in r.partial.items()})
    if partial:
        lines += [f"{PARTIAL} Partial evaluation (a subset of the test set, not comparable to the paper's number):",
                  "", *[f"- {entry}" for entry in partial], ""]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def _latex_cell(stat: Stat, paper: float | None) -> str:
    ours = "--" if stat.mean is None else f"{stat.mean:.2f}" + (f"$\\pm${stat.std:.2f}" if stat.std is not None else "")
    if paper is None:
        return ours
    diff = "" if stat.mean is None else f"; ${stat.mean - paper:+.2f}$"
    return f"{ours} {{\\scriptsize({paper:.2f}{diff})}}"


def render_latex(name: str, spec: dict[str, Any], blocks: dict[str, list[Row]]) -> str:
    cols = _columns(spec)
    width = 3 + len(cols)
    caption = _latex_escape(f"{spec['title']}: ours (mean $\\pm$ std over seeds) with the paper's number and "
                            f"the difference in brackets" + (f" ({spec['citation']})." if spec["citation"] else "."))
    if any(row.partial for rows in blocks.values() for row in rows):
        caption += " $^\\dagger$Evaluated on a subset of the test set (limit), not comparable to the paper."
    lines = ["% Generated by python -m abba.tables; needs \\usepackage{booktabs}.", "\\begin{table}[t]",
             "\\centering", "\\resizebox{\\linewidth}{!}{%", f"\\begin{{tabular}}{{lrr{'c' * len(cols)}}}",
             "\\toprule",
             "Method & Params & Seeds & " + " & ".join(BENCHMARK_LABELS.get(c, _latex_escape(c)) for c in cols)
             + " \\\\"]
    for model, rows in blocks.items():
        lines += ["\\midrule", f"\\multicolumn{{{width}}}{{l}}{{\\textit{{{_latex_escape(spec['models'][model]['label'])}}}}} \\\\",
                  "\\midrule"]
        for row in rows:
            params = format_params(row.params).replace(MISSING, "--")
            cells = [_latex_cell(row.cells[c], row.paper.get(c)) + ("$^\\dagger$" if c in row.partial else "")
                     for c in cols]
            lines.append(f"{_latex_escape(row.label)} & {params} & {len(row.seeds)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", f"\\caption{{{caption}}}", f"\\label{{tab:{name}}}",
              "\\end{table}", ""]
    return "\n".join(lines)


CSV_FIELDS = ("table", "model", "method", "method_label", "benchmark", "n_seeds", "mean", "std", "paper", "diff",
              "params", "paper_params", "partial")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def render_csv(name: str, spec: dict[str, Any], blocks: dict[str, list[Row]]) -> str:
    """One line per (model, method, benchmark incl. avg); missing numbers are empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for model, rows in blocks.items():
        for row in rows:
            for col in _columns(spec):
                stat, paper = row.cells[col], row.paper.get(col)
                diff = None if stat.mean is None or paper is None else stat.mean - paper
                writer.writerow([name, model, row.method, row.label, col, stat.n, _num(stat.mean), _num(stat.std),
                                 _num(paper), _num(diff), row.params if row.params is not None else "",
                                 row.paper_params or "", "true" if col in row.partial else ""])
    return buf.getvalue()


# ---------------------------------------------------------------- the mini table

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


def _distinct(values) -> str:
    """'480', '480 / 960' when runs differ, '–' when none is known."""
    known = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    return " / ".join(str(v) for v in known) if known else MISSING


def _global_batch(run: RunResult) -> int | None:
    """Sequences per optimizer step from the config's trainer section (keep_global_batch as abba.train)."""
    trainer = run.config.get("trainer") or {}
    try:
        per_device = int(trainer["per_device_train_batch_size"])
        accumulation = int(trainer["gradient_accumulation_steps"])
    except (KeyError, TypeError, ValueError):
        return None
    world = int(run.info.get("world_size") or 1)
    if trainer.get("keep_global_batch", True) and world > 1:
        accumulation = max(1, accumulation // world)
    return per_device * accumulation * world


def model_label(model: str, runs: list[RunResult]) -> str:
    """'SmolLM2-135M-Instruct' from a run's model.name_or_path, else the model's config name."""
    for run in runs:
        source = (run.config.get("model") or {}).get("name_or_path")
        if run.model == model and source:
            return str(source).rstrip("/").split("/")[-1]
    return model


def mini_description(blocks: dict[str, list[Row]], runs: list[RunResult], labels: dict[str, str]) -> str:
    """The header line: model(s), training budget of the tuned runs, evaluated items per benchmark."""
    models = "; ".join(f"{labels[m]} (`{m}`)" for m in blocks) or MISSING
    tuned = [r for r in runs if r.method != "base"]
    data = _distinct((r.config.get("data") or {}).get("name") for r in tuned)
    training = (f"{_distinct(r.info.get('n_train_examples') for r in tuned)} training examples ({data}), "
                f"{_distinct(r.info.get('global_step') for r in tuned)} optimizer steps of "
                f"{_distinct(_global_batch(r) for r in tuned)} sequences")
    items = ", ".join(f"{BENCHMARK_LABELS[b]} {_distinct(r.n_items.get(b) for r in runs)}"
                      + (f" {PARTIAL}" if any(b in r.partial for r in runs) else "") for b in MINI_BENCHMARKS)
    partial = (f" {PARTIAL} a seeded subset of the test set (eval.run limit), the same items for every run: partial, "
               f"not comparable to full-test-set numbers." if any(r.partial for r in runs) else "")
    return f"Model: {models}. Tuned runs: {training}. Evaluated items: {items}.{partial}"


def _mini_text(stat: Stat, metric: str, dash: str = MISSING, pm: str = " ± ") -> str:
    if stat.mean is None:
        return dash
    digits = 2 if metric == "accuracy" else 3
    return f"{stat.mean:.{digits}f}" + (f"{pm}{stat.std:.{digits}f}" if stat.std is not None else "")


def _majority_cells(majority: Majority, dash: str = MISSING) -> list[str]:
    return [f"{majority.rate[b]:.2f}" if metric == "accuracy" and b in majority.rate else dash
            for metric, b in _mini_columns()]


def _column_label(metric: str, bench: str) -> str:
    return f"{BENCHMARK_LABELS[bench]} {'acc' if metric == 'accuracy' else 'NLL'}"


def render_mini_markdown(blocks: dict[str, list[Row]], majority: dict[str, Majority], runs: list[RunResult],
                         labels: dict[str, str]) -> str:
    cols = _mini_columns()
    lines = [f"## mini: {MINI_TITLE}", "", mini_description(blocks, runs, labels), "",
             "Cell: mean ± std over seeds (std left out with one seed); \"–\": no number. acc: accuracy (%); NLL: "
             "teacher-forced NLL of the gold responses on the evaluated items, nats per token (lower is better). "
             "Avg: per seed, the mean over the four benchmarks (seeds missing any are left out), then mean ± std "
             "over seeds. Majority answer: share (%) of the most frequent gold answer among the evaluated items. "
             "Params: trainable parameters.", "", _provenance(runs), ""]
    for model, rows in blocks.items():
        lines += [f"### {labels[model]}", "",
                  "| Method | Params | Seeds | " + " | ".join(_column_label(*c) for c in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for row in rows:
            cells = [_mini_text(row.cells[f"{metric}:{bench}"], metric) for metric, bench in cols]
            lines.append(f"| {row.label} | {format_params(row.params)} | {len(row.seeds)} | "
                         + " | ".join(cells) + " |")
        lines.append(f"| Majority answer | {MISSING} | {MISSING} | "
                     + " | ".join(_majority_cells(majority[model])) + " |")
        for bench, paths in majority[model].disagree.items():
            lines.append(f"\nNote: {len(paths)} run(s) evaluated other {BENCHMARK_LABELS[bench]} items than "
                         f"{majority[model].source[bench]}; its items give the majority answer.")
        lines.append("")
    return "\n".join(lines)


def render_mini_latex(blocks: dict[str, list[Row]], majority: dict[str, Majority], labels: dict[str, str]) -> str:
    cols = _mini_columns()
    width = 3 + len(cols)
    groups = [*MINI_BENCHMARKS, "avg"]
    caption = (f"{_latex_escape(MINI_TITLE)}: mean $\\pm$ std over seeds; NLL: teacher-forced NLL of the gold "
               "responses (nats per token, lower is better); Majority answer: share of the most frequent gold answer.")
    lines = ["% Generated by python -m abba.tables; needs \\usepackage{booktabs}.", "\\begin{table}[t]",
             "\\centering", "\\resizebox{\\linewidth}{!}{%", f"\\begin{{tabular}}{{lrr{'c' * len(cols)}}}",
             "\\toprule",
             " & & & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{BENCHMARK_LABELS[b]}}}" for b in groups) + " \\\\",
             " ".join(f"\\cmidrule(lr){{{4 + 2 * i}-{5 + 2 * i}}}" for i in range(len(groups))),
             "Method & Params & Seeds & " + " & ".join("Acc" if m == "accuracy" else "NLL" for m, _ in cols) + " \\\\"]
    for model, rows in blocks.items():
        lines += ["\\midrule", f"\\multicolumn{{{width}}}{{l}}{{\\textit{{{_latex_escape(labels[model])}}}}} \\\\",
                  "\\midrule"]
        for row in rows:
            params = format_params(row.params).replace(MISSING, "--")
            cells = [_mini_text(row.cells[f"{m}:{b}"], m, "--", "$\\pm$") for m, b in cols]
            lines.append(f"{_latex_escape(row.label)} & {params} & {len(row.seeds)} & " + " & ".join(cells) + " \\\\")
        lines += ["\\midrule", "Majority answer & -- & -- & " + " & ".join(_majority_cells(majority[model], "--"))
                  + " \\\\"]
    lines += ["\\bottomrule", "\\end{tabular}}", f"\\caption{{{caption}}}", "\\label{tab:mini}", "\\end{table}", ""]
    return "\n".join(lines)


def render_mini_csv(blocks: dict[str, list[Row]], majority: dict[str, Majority]) -> str:
    """One line per (model, method, benchmark incl. avg, metric), then the majority-answer lines (accuracy)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MINI_CSV_FIELDS)
    for model, rows in blocks.items():
        for row in rows:
            for metric, bench in _mini_columns():
                stat = row.cells[f"{metric}:{bench}"]
                writer.writerow(["mini", model, row.method, row.label, bench, metric, stat.n, _num(stat.mean),
                                 _num(stat.std), row.params if row.params is not None else ""])
        for bench in (*MINI_BENCHMARKS, "avg"):
            rate = majority[model].rate.get(bench)
            writer.writerow(["mini", model, "majority", "Majority answer", bench, "accuracy", "", _num(rate), "", ""])
    return buf.getvalue()


def write_mini(output_dir: Path, runs: list[RunResult], plots: bool) -> Path:
    """mini.md/.tex/.csv (and .png) from the runs with `table: mini`; returns the Markdown path."""
    others = sorted({b for r in runs for b in (*r.scores, *r.nll)} - set(MINI_BENCHMARKS))
    if others:
        log.warning("mini: benchmark(s) %s are not columns of the mini table (%s): left out", ", ".join(others),
                    ", ".join(MINI_BENCHMARKS))
    blocks = {model: build_mini_rows(model, runs) for model in sorted({r.model for r in runs})}
    majority = {model: majority_answers([r for r in runs if r.model == model]) for model in blocks}
    labels = {model: model_label(model, runs) for model in blocks}
    write_atomic(output_dir / "mini.md", render_mini_markdown(blocks, majority, runs, labels))
    write_atomic(output_dir / "mini.tex", render_mini_latex(blocks, majority, labels))
    write_atomic(output_dir / "mini.csv", render_mini_csv(blocks, majority))
    if plots:
        from .plots import mini_chart

        mini_chart(blocks, {m: majority[m].rate.get("avg") for m in blocks}, labels, output_dir / "mini.png",
                   title=f"mini: {MINI_TITLE}", runs=runs)
    return output_dir / "mini.md"


# ---------------------------------------------------------------- entry point

def load_reference(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TablesError(f"paper reference file {path} not found")
    return yaml.safe_load(path.read_text())


def build_tables(results_dir: str | Path, output_dir: str | Path, reference: str | Path = DEFAULT_REFERENCE,
                 plots: bool = True, tables: tuple[str, ...] = TABLE_ORDER) -> dict[str, Path]:
    """Write the paper's tables (with "–" where we have no runs), `mini` and `other` (when they have runs),
    limited to `tables`; return {table name: markdown path}."""
    unknown = set(tables) - set(TABLE_ORDER)
    if unknown:
        raise TablesError(f"unknown table(s) {', '.join(sorted(unknown))}; tables: {', '.join(TABLE_ORDER)}")
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    ref = load_reference(Path(reference))
    model_names = [m for t in ref.get("tables", {}).values() for m in t["models"]]
    model_names += [p.stem for p in (REPO_ROOT / "configs" / "model").glob("*.yaml")]
    runs = collect_runs(results_dir, model_names, exclude=output_dir)
    for table in sorted({r.table for r in runs} - set(TABLE_ORDER)):
        log.warning("%d run(s) have table: %s, which is none of %s: left out", sum(r.table == table for r in runs),
                    table, ", ".join(TABLE_ORDER))
    written = {}
    for name in (t for t in TABLE_ORDER if t in tables):
        table_runs = [r for r in runs if r.table == name]
        if name == "mini":
            if table_runs:
                written[name] = write_mini(output_dir, table_runs, plots)
            elif tables != TABLE_ORDER:
                log.warning("mini: no run under %s has table: mini; nothing written", results_dir)
            continue
        if name == "other" and not table_runs:
            continue
        spec = table_spec(name, ref, table_runs)
        blocks = {model: build_rows(spec, model, table_runs) for model in spec["models"]}
        blocks.update({m: build_rows(spec, m, table_runs) for m in sorted({r.model for r in table_runs})
                       if m not in blocks})
        for m in blocks:
            spec["models"].setdefault(m, {"label": m, "methods": {}})
        write_atomic(output_dir / f"{name}.md", render_markdown(name, spec, blocks, table_runs))
        write_atomic(output_dir / f"{name}.tex", render_latex(name, spec, blocks))
        write_atomic(output_dir / f"{name}.csv", render_csv(name, spec, blocks))
        if plots:
            from .plots import table_bar_chart

            table_bar_chart(spec, blocks, output_dir / f"{name}.png", title=f"{name}: {spec['title']}",
                            runs=table_runs)
        written[name] = output_dir / f"{name}.md"
    return written


def main(argv: list[str] | None = None) -> None:
    """The command line: a bad argument exits 2, a missing or unreadable input 1, each with one line (abba/cli.py)."""
    from omegaconf import OmegaConf

    from .cli import UsageError, did_you_mean, one_line_errors, unknown_options

    with one_line_errors(refusals=(TablesError,), on_interrupt="interrupted: tables already written are complete "
                                                               "(each is written whole); run the same command again"):
        try:
            args = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
        except Exception as error:  # noqa: BLE001 - a malformed key=value: say which, in one line
            raise UsageError(str(error).splitlines()[0]) from None
        unknown_options(args, ("results_dir", "output_dir", "reference", "plots", "tables"),
                        "use results_dir=, output_dir=, reference=, plots=, tables=")
        results_dir = args.get("results_dir", "results")
        tables = args.get("tables", TABLE_ORDER)
        tables = tuple(tables.split(",")) if isinstance(tables, str) else tuple(tables)
        for name in tables:  # checked here so that a misspelt table is a usage error (exit 2)
            if name not in TABLE_ORDER:
                raise UsageError(f"unknown table {name}{did_you_mean(name, TABLE_ORDER)}; tables: "
                                 f"{', '.join(TABLE_ORDER)}")
        if not Path(str(results_dir)).is_dir():
            raise TablesError(f"results_dir={results_dir} does not exist: pass the folder the evaluations wrote "
                              f"(results/, or RESULTS_DIR of scripts/*_merge_eval.sh)")
        written = build_tables(results_dir, args.get("output_dir", f"{results_dir}/tables"),
                               args.get("reference", DEFAULT_REFERENCE), bool(args.get("plots", True)), tables)
    for name, path in written.items():
        print(f"{name}: {path} (+ .tex .csv{' .png' if args.get('plots', True) else ''})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
