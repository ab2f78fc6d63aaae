"""Rendering the mini table for abba.tables: its header line, Markdown, LaTeX and CSV, and `write_mini`."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from .files import write_text
from .table_cells import Row, Stat
from .table_mini import MINI_CSV_FIELDS, Majority, _mini_columns, build_mini_rows, majority_answers
from .table_registry import BENCHMARK_LABELS, MINI_BENCHMARKS, MINI_TITLE
from .table_render import MISSING, PARTIAL, _latex_escape, _num, _provenance, format_params
from .table_runs import RunResult

log = logging.getLogger("abba.tables")


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
    write_text(output_dir / "mini.md", render_mini_markdown(blocks, majority, runs, labels))
    write_text(output_dir / "mini.tex", render_mini_latex(blocks, majority, labels))
    write_text(output_dir / "mini.csv", render_mini_csv(blocks, majority))
    if plots:
        from .plots import mini_chart

        mini_chart(blocks, {m: majority[m].rate.get("avg") for m in blocks}, labels, output_dir / "mini.png",
                   title=f"mini: {MINI_TITLE}", runs=runs)
    return output_dir / "mini.md"
