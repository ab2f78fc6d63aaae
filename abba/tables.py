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
A results folder below `seed<k>` (a sweep member: abba.merge_eval names it after the run folder) is its own
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

This module is the command line and `build_tables`; what a table is lives in abba.table_registry, the work in
abba.table_runs (reading runs), abba.table_cells (aggregating), abba.table_render (md/tex/csv), abba.table_mini and
abba.table_mini_render (the mini table).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from .layout import REPO_ROOT
from .files import write_text
from .table_cells import Row, Stat, build_rows, mean_std, method_label, seed_cells, table_spec
from .table_mini import mini_order
from .table_mini_render import write_mini
from .table_registry import (BENCHMARK_LABELS, MINI_BENCHMARKS, MINI_METHOD_ORDER, MINI_TITLE, REFERENCE_PATH,
                             TABLE_ORDER)
from .table_render import CSV_FIELDS, MISSING, PARTIAL, format_cell, format_params, render_csv, render_latex, \
    render_markdown
from .table_runs import RunResult, TablesError, collect_runs, is_partial, load_run, method_key, \
    parse_experiment_name, variant_of

log = logging.getLogger("abba.tables")

DEFAULT_REFERENCE = REFERENCE_PATH
#: The names this module has always offered (the implementation lives in the table_* modules).
__all__ = ["BENCHMARK_LABELS", "CSV_FIELDS", "DEFAULT_REFERENCE", "MINI_BENCHMARKS", "MINI_METHOD_ORDER",
           "MINI_TITLE", "MISSING", "PARTIAL", "Row", "RunResult", "Stat", "TABLE_ORDER", "TablesError",
           "build_rows", "build_tables", "collect_runs", "format_cell", "format_params", "is_partial", "load_reference",
           "load_run", "main", "mean_std", "method_key", "method_label", "mini_order", "parse_experiment_name",
           "render_csv", "render_latex", "render_markdown", "seed_cells", "table_spec", "variant_of", "write_mini"]


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
        write_text(output_dir / f"{name}.md", render_markdown(name, spec, blocks, table_runs))
        write_text(output_dir / f"{name}.tex", render_latex(name, spec, blocks))
        write_text(output_dir / f"{name}.csv", render_csv(name, spec, blocks))
        if plots:
            from .plots import table_bar_chart

            table_bar_chart(spec, blocks, output_dir / f"{name}.png", title=f"{name}: {spec['title']}",
                            runs=table_runs)
        written[name] = output_dir / f"{name}.md"
    return written


USAGE = "usage: python -m abba.tables [results_dir=DIR] [output_dir=DIR] [reference=YAML] [plots=true|false] " \
        "[tables=NAME,...]"


def _table_names(value: str) -> tuple[str, ...]:
    """`tables=table1,table2` (or [table1,table2]) as names; a usage error for one that is none of TABLE_ORDER."""
    from .cli import UsageError, did_you_mean

    text = value.strip()
    names = tuple(n.strip() for n in text.strip("[]").split(",") if n.strip())
    if not names or text.lower() in ("true", "false") or text.lstrip("+-").replace(".", "", 1).isdigit():
        raise UsageError(f"tables={value or None} is not a list of tables; tables: {', '.join(TABLE_ORDER)}")
    for name in names:  # checked here so that a misspelt table is a usage error (exit 2)
        if name not in TABLE_ORDER:
            raise UsageError(f"unknown table {name}{did_you_mean(name, TABLE_ORDER)}; tables: {', '.join(TABLE_ORDER)}")
    return names


def main(argv: list[str] | None = None) -> None:
    """The command line (key=value): a bad argument exits 2, a missing or unreadable input 1, each with one line
    (abba/cli.py)."""
    from .cli import UsageError, one_line_errors, parse_bool, parse_key_values

    with one_line_errors(refusals=(TablesError,), on_interrupt="interrupted: tables already written are complete "
                                                               "(each is written whole); run the same command again"):
        args = parse_key_values(sys.argv[1:] if argv is None else argv,
                                {"results_dir": "results", "output_dir": None, "reference": str(DEFAULT_REFERENCE),
                                 "plots": "true", "tables": ",".join(TABLE_ORDER)}, USAGE)
        for key in ("results_dir", "output_dir", "reference"):
            if args[key] == "":
                raise UsageError(f"{key}= needs a value (a path)")
        plots = parse_bool("plots", args["plots"])
        tables = _table_names(args["tables"])
        results_dir = args["results_dir"]
        output_dir = Path(args["output_dir"] or f"{results_dir}/tables")
        if output_dir.exists() and not output_dir.is_dir():
            raise TablesError(f"output_dir={output_dir} is a file: pass a folder (it is created when missing)")
        if not Path(results_dir).is_dir():
            raise TablesError(f"results_dir={results_dir} does not exist: pass the folder the evaluations wrote "
                              f"(results/, or RESULTS_DIR of scripts/*_merge_eval.sh)")
        written = build_tables(results_dir, output_dir, args["reference"], plots, tables)
    for name, path in written.items():
        print(f"{name}: {path} (+ .tex .csv{' .png' if plots else ''})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
