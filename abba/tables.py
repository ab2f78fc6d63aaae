"""Rebuild the paper's Tables 1 and 2 from our evaluated runs, beside the paper's numbers.

    python -m abba.tables results_dir=results output_dir=results/tables
    python -m abba.tables results_dir=outputs/quickstart/results output_dir=outputs/quickstart/tables tables=other

Reads every `metrics.json` under `results_dir` (written by eval.run / scripts/*_merge_eval.sh) with the
`config.yaml` and `run_info.json` copied beside it, and the paper's numbers from results/paper_reference.yaml.
Writes `<table>.md`, `<table>.tex` (booktabs), `<table>.csv` and, with plots=true (default), `<table>.png`
for table1 (commonsense), table2 (arithmetic) and `other` (runs whose config has `table: null`);
`tables=table1,table2` limits them.

Which row a run lands in (`method_key`): `peft.method` names it; ABBA adds its rank r = r1 + r2 (the paper's
"ABBA r=32" is r1 = r2 = 16: the parameters of LoRA r=32), so abba_r16 / abba_r32; a baseline at the paper's
rank 32 is just its method (lora, dora, ...), at another rank `<method>_r<r>`; the released-code variant
(official_code=true or peft.scaling=official) gets `_official`. The table is the config's `table`, the model
its `model.name`. Without a usable config the experiment name t<N>_<model>_<method key> is parsed instead.

A cell is our mean ± sample std (ddof 1) over seeds in %, then (paper; ours − paper). Avg: per seed, the mean
over the table's benchmarks (seeds missing any benchmark are left out), then mean ± std over seeds.
Missing numbers are "–" (empty in the CSV), never 0.
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
PAPER_BASELINE_RANK = 32  # every baseline row of paper v4 Tables 1-2 uses rank 32
DEFAULT_REFERENCE = REPO_ROOT / "results" / "paper_reference.yaml"
BENCHMARK_LABELS = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaSwag",
                    "winogrande": "WinoGrande", "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c",
                    "openbookqa": "OBQA", "gsm8k": "GSM8K", "math": "MATH", "avg": "Avg"}
METHOD_LABELS = {"full": "Full FT", "lora": "LoRA", "rslora": "rsLoRA", "pissa": "PiSSA", "dora": "DoRA",
                 "hira": "HiRA", "loha": "LoHa", "abba": "ABBA", "lora_pro": "LoRA-Pro"}
TABLE_ORDER = ("table1", "table2", "other")


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


@dataclass
class Stat:
    mean: float | None = None
    std: float | None = None
    n: int = 0


@dataclass
class Row:
    method: str
    label: str
    cells: dict[str, Stat] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    paper_params: str | None = None
    seeds: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- reading runs

def method_key(cfg: dict[str, Any]) -> str:
    """The row key of a run from its resolved config (see the module docstring for the rule)."""
    peft = cfg.get("peft") or {}
    method = peft.get("method")
    if method is None:
        raise TablesError("config has no peft.method")
    official = bool(cfg.get("official_code")) or peft.get("scaling") == "official"
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
            return f"table{match['table']}", model, rest[len(model) + 1:]
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
    scores = {}
    for bench, entry in metrics.items():
        if isinstance(entry, dict) and entry.get("accuracy") is not None:
            scores[bench] = 100.0 * float(entry["accuracy"])
    commit = info.get("git_commit") or next((e.get("git_commit") for e in metrics.values()
                                             if isinstance(e, dict) and e.get("git_commit")), None)
    return [RunResult(table, model, method, int(seed), scores, info.get("trainable_params"), commit,
                      _hardware_label(info), str(metrics_path))]


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
            key = (run.table, run.model, run.method, run.seed)
            if key in seen:
                log.warning("%s repeats %s seed %d of %s: ignored", path, run.method, run.seed, seen[key])
                continue
            seen[key] = run.path
            runs.append(run)
    return runs


# ---------------------------------------------------------------- aggregating

def mean_std(values: list[float]) -> Stat:
    if not values:
        return Stat()
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


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


def build_rows(spec: dict[str, Any], model: str, runs: list[RunResult]) -> list[Row]:
    """The paper's rows in the paper's order, then any other method we ran, each with its cells."""
    paper_methods = spec["models"].get(model, {}).get("methods", {})
    ours = {r.method for r in runs if r.model == model}
    keys = list(paper_methods) + sorted(ours - set(paper_methods))
    rows = []
    for key in keys:
        paper = paper_methods.get(key, {})
        mine = sorted((r for r in runs if r.model == model and r.method == key), key=lambda r: r.seed)
        row = Row(key, paper.get("label") or method_label(key), paper_params=paper.get("params"),
                  paper={b: float(paper[b]) for b in spec["benchmarks"] + ["avg"] if b in paper},
                  seeds=[r.seed for r in mine])
        for bench in spec["benchmarks"]:
            row.cells[bench] = mean_std([r.scores[bench] for r in mine if bench in r.scores])
        if spec["avg"]:
            complete = [r for r in mine if all(b in r.scores for b in spec["benchmarks"])]
            row.cells["avg"] = mean_std([statistics.fmean(r.scores[b] for b in spec["benchmarks"]) for r in complete])
        params = [r.trainable_params for r in mine if r.trainable_params is not None]
        row.params = params[0] if params else None
        if len(set(params)) > 1:
            log.warning("%s/%s: runs disagree on trainable parameters %s; showing the first", model, key, params)
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
    commits = sorted({r.git_commit[:10] for r in runs if r.git_commit})
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
            cells = [format_cell(row.cells[c], row.paper.get(c)) for c in cols]
            lines.append(f"| {row.label} | {params} | {len(row.seeds)} | " + " | ".join(cells) + " |")
        lines.append("")
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
            cells = [_latex_cell(row.cells[c], row.paper.get(c)) for c in cols]
            lines.append(f"{_latex_escape(row.label)} & {params} & {len(row.seeds)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", f"\\caption{{{caption}}}", f"\\label{{tab:{name}}}",
              "\\end{table}", ""]
    return "\n".join(lines)


CSV_FIELDS = ("table", "model", "method", "method_label", "benchmark", "n_seeds", "mean", "std", "paper", "diff",
              "params", "paper_params")


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
                                 row.paper_params or ""])
    return buf.getvalue()


# ---------------------------------------------------------------- entry point

def load_reference(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TablesError(f"paper reference file {path} not found")
    return yaml.safe_load(path.read_text())


def build_tables(results_dir: str | Path, output_dir: str | Path, reference: str | Path = DEFAULT_REFERENCE,
                 plots: bool = True, tables: tuple[str, ...] = TABLE_ORDER) -> dict[str, Path]:
    """Write the paper's tables (with "–" where we have no runs) and `other` (when it has runs), limited to
    `tables`; return {table name: markdown path}."""
    unknown = set(tables) - set(TABLE_ORDER)
    if unknown:
        raise TablesError(f"unknown table(s) {', '.join(sorted(unknown))}; tables: {', '.join(TABLE_ORDER)}")
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    ref = load_reference(Path(reference))
    model_names = [m for t in ref.get("tables", {}).values() for m in t["models"]]
    model_names += [p.stem for p in (REPO_ROOT / "configs" / "model").glob("*.yaml")]
    runs = collect_runs(results_dir, model_names, exclude=output_dir)
    written = {}
    for name in (t for t in TABLE_ORDER if t in tables):
        table_runs = [r for r in runs if r.table == name]
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

            table_bar_chart(spec, blocks, output_dir / f"{name}.png", title=f"{name}: {spec['title']}")
        written[name] = output_dir / f"{name}.md"
    return written


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    args = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    unknown = set(args) - {"results_dir", "output_dir", "reference", "plots", "tables"}
    try:
        if unknown:
            raise TablesError(f"unknown argument(s) {', '.join(sorted(unknown))}; "
                              "use results_dir=, output_dir=, reference=, plots=, tables=")
        results_dir = args.get("results_dir", "results")
        tables = args.get("tables", TABLE_ORDER)
        tables = tuple(tables.split(",")) if isinstance(tables, str) else tuple(tables)
        written = build_tables(results_dir, args.get("output_dir", f"{results_dir}/tables"),
                               args.get("reference", DEFAULT_REFERENCE), bool(args.get("plots", True)), tables)
    except TablesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for name, path in written.items():
        print(f"{name}: {path} (+ .tex .csv{' .png' if args.get('plots', True) else ''})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
