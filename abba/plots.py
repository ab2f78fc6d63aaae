"""Figures of the tables: ours-vs-paper bar charts of the paper's tables and `other`, the mini table's
accuracy/NLL panels, and their captions (items per benchmark, seeds); and the `python -m abba.plots` command,
which draws training-loss curves (abba.loss_curves).

    python -m abba.tables results_dir=results output_dir=results/tables           # writes the bar charts too
    python -m abba.plots loss_curve out=loss.png ABBA=outputs/x/seed0 LoRA=outputs/y/seed0

`loss_curve` takes `out=PNG` (default loss_curve.png) and one LABEL=RUN_DIR (or LABEL=.../metrics.jsonl) per
curve. A bad command line exits 2, a run without metrics.jsonl 1, each with one `error:` line (abba/cli.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .figures import add_caption, pyplot, save_figure
from .table_registry import BENCHMARK_LABELS, MINI_BENCHMARKS


OURS_COLOR = "#1f77b4"
PAPER_COLOR = "#aaaaaa"  # grey, so "paper" never reads as "ours"
ERROR_BAR_NOTE = ("error bar: sample std (ddof 1) over the bar's seeds, drawn only for bars with 2 or more seeds "
                  "(one seed: no error bar)")


def _join(values) -> str:
    """'100', '100 / 200' when runs differ (sorted, distinct), '–' for none."""
    known = sorted({v for v in values if v is not None})
    return " / ".join(str(v) for v in known) if known else "–"


def items_text(runs, benchmarks, labels: dict[str, str]) -> str:
    """'n (items per benchmark): GSM8K 100, MATH 100' from the runs' metrics.json `n` (per model when the runs
    hold several models)."""
    runs = list(runs)
    if not runs:
        return "n (items per benchmark): no evaluated runs"
    models = sorted({r.model for r in runs})
    parts = []
    for model in models:
        mine = [r for r in runs if r.model == model]
        counts = ", ".join(f"{BENCHMARK_LABELS.get(b, b)} {_join(r.n_items.get(b) for r in mine)}" for b in benchmarks
                           if any(b in r.scores or b in r.nll for r in mine))
        parts.append((f"{labels.get(model, model)}: " if len(models) > 1 else "") + (counts or "–"))
    return "n (items per benchmark): " + "; ".join(parts)


def seeds_text(blocks: dict[str, list], labels: dict[str, str]) -> str:
    """'Runs: ABBA r=16 seeds 0, 1, 2; LoRA r=16 seed 0' for every row with runs (per model when there are
    several)."""
    parts = []
    for model, rows in blocks.items():
        ran = [f"{r.label} seed{'s' if len(r.seeds) > 1 else ''} {', '.join(map(str, r.seeds))}"
               for r in rows if r.seeds]
        if ran:
            parts.append((f"{labels.get(model, model)}: " if len(blocks) > 1 else "") + "; ".join(ran))
    if not parts:
        return "Runs: none of ours yet (\"–\" marks a method without runs)"
    return "Runs: " + " | ".join(parts) + ". s=k above a bar: the number of seeds it averages"


def _seed_label(ax, x: float, top: float, n: int) -> None:
    ax.annotate(f"s={n}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                fontsize=7)


def table_bar_figure(spec: dict[str, Any], blocks: dict[str, list], title: str = "", runs=()):
    """The bar chart of a paper table (or `other`) as a Figure: one panel per model and summary column (Avg for
    Table 1, each benchmark otherwise); per method the paper's number (grey) and ours (blue: mean over seeds,
    s=k seeds above it, an error bar of the sample std only with 2 or more seeds). A method with both bars
    has them side by side around its tick; with one, that bar sits on the tick. The caption gives the items
    per benchmark (`runs`' metrics.json n) and the seeds of every method."""
    from matplotlib.patches import Patch

    plt = pyplot()
    columns = ["avg"] if spec["avg"] else spec["benchmarks"]
    panels = [(model, col) for model in blocks for col in columns]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(max(4.5 * len(panels), 5), 4), squeeze=False)
    drawn = set()
    for ax, (model, col) in zip(axes[0], panels):
        rows = blocks[model]
        values = []
        for x, row in enumerate(rows):
            stat, paper = row.cells[col], row.paper.get(col)
            both = paper is not None and stat.mean is not None
            if paper is not None:
                ax.bar(x - 0.2 if both else x, paper, 0.4, color=PAPER_COLOR)
                drawn.add("paper")
                values.append(paper)
            ours_x = x + 0.2 if paper is not None else x
            if stat.mean is None:  # no run yet: a dash at the foot of the axis, never a zero-height bar
                ax.text(ours_x, 0.02, "–", ha="center", va="bottom", transform=ax.get_xaxis_transform())
                continue
            ax.bar(ours_x, stat.mean, 0.4, color=OURS_COLOR)
            drawn.add("ours")
            top = stat.mean
            if stat.std is not None:  # std exists only with 2+ seeds (tables.mean_std)
                ax.errorbar(ours_x, stat.mean, yerr=stat.std, fmt="none", ecolor="black", capsize=3)
                top += stat.std
            _seed_label(ax, ours_x, top, stat.n)
            values += [stat.mean - (stat.std or 0.0), top]
        # anchor: the end of each rotated label sits at its tick, under its bars
        ax.set_xticks(list(range(len(rows))), [r.label for r in rows], rotation=45, ha="right",
                      rotation_mode="anchor", fontsize=8)
        label = spec["models"].get(model, {}).get("label", model)
        ax.set_title(f"{label}: {BENCHMARK_LABELS.get(col, col)}", fontsize=10)
        ax.set_ylabel("accuracy (%)")
        if values:  # zoom in: the methods differ by a few points
            ax.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 5))
    handles = [Patch(color=PAPER_COLOR, label="paper")] if "paper" in drawn else []
    if "ours" in drawn:
        handles.append(Patch(color=OURS_COLOR, label="ours (mean over seeds)"))
    if handles:  # only series that draw a bar somewhere
        axes[0][0].legend(handles=handles, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    labels = {m: spec["models"].get(m, {}).get("label", m) for m in blocks}
    notes = [items_text(runs, spec["benchmarks"], labels), seeds_text(blocks, labels)]
    if "ours" in drawn:
        notes.append(ERROR_BAR_NOTE + ("; Avg: per seed the mean over the benchmarks, then over seeds"
                                       if spec["avg"] else ""))
    add_caption(fig, notes, max(int(fig.get_figwidth() * 16), 80))
    return fig


def table_bar_chart(spec: dict[str, Any], blocks: dict[str, list], path: Path, title: str = "", runs=()) -> Path:
    """table_bar_figure saved to `path`."""
    fig = table_bar_figure(spec, blocks, title, runs)
    save_figure(fig, path)
    pyplot().close(fig)
    return path


def mini_figure(blocks: dict[str, list], majority_avg: dict[str, float | None], labels: dict[str, str],
                title: str = "", runs=()):
    """The mini table as a Figure, one line of three panels per model: mean accuracy (%) over the four benchmarks
    per method (bar = mean over seeds with s=k seeds above it, dots = the seeds, error bar = sample std only with
    2 or more seeds; dashed line = the majority-answer rate), mean held-out NLL (nats/token, same encoding), and
    NLL against accuracy per method (does a better fit of the gold responses go with more correct answers?).
    Methods without a complete seed get no bar. The caption gives the items per benchmark and the seeds."""
    plt = pyplot()
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
    fig, axes = plt.subplots(max(len(blocks), 1), 3, figsize=(16, 4.2 * max(len(blocks), 1)), squeeze=False)
    for axrow, (model, rows) in zip(axes, blocks.items()):
        xs = list(range(len(rows)))
        for ax, metric, ylabel in ((axrow[0], "accuracy", "mean accuracy (%)"),
                                   (axrow[1], "nll", "mean NLL (nats/token, lower is better)")):
            stats = [r.cells[f"{metric}:avg"] for r in rows]
            for x, stat, row in zip(xs, stats, rows):
                color = "#999999" if row.method == "base" else colors[x % len(colors)]
                if stat.mean is None:
                    ax.text(x, 0.02, "–", ha="center", va="bottom", transform=ax.get_xaxis_transform())
                    continue
                ax.bar(x, stat.mean, 0.6, color=color, alpha=0.75)
                if stat.std is not None:  # 2+ seeds; one seed has no spread to show
                    ax.errorbar(x, stat.mean, yerr=stat.std, fmt="none", ecolor="black", capsize=3)
                ax.plot([x] * len(stat.values), stat.values, "o", color="black", markersize=3, zorder=3)
                _seed_label(ax, x, max(stat.mean + (stat.std or 0.0), *stat.values), stat.n)
            if metric == "accuracy" and majority_avg.get(model) is not None:
                ax.axhline(majority_avg[model], ls="--", color="black", lw=1.2,
                           label=f"majority answer ({majority_avg[model]:.1f})")
                ax.legend(fontsize=8, loc="lower right")
            values = [v for s in stats for v in (*s.values, (s.mean or 0) + (s.std or 0), (s.mean or 0) - (s.std or 0))
                      if s.mean is not None]
            if metric == "accuracy" and majority_avg.get(model) is not None:
                values.append(majority_avg[model])
            if values:  # zoom in: the methods differ by little
                span = max(values) - min(values) or max(abs(max(values)) * 0.1, 1e-3)
                ax.set_ylim(min(values) - 0.3 * span if metric == "nll" else max(0.0, min(values) - 0.3 * span),
                            max(values) + 0.2 * span)
            ax.set_xticks(xs, [r.label for r in rows], rotation=45, ha="right", rotation_mode="anchor",
                          fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{labels.get(model, model)}: {ylabel.split(' (')[0]} over 4 benchmarks", fontsize=10)
        ax = axrow[2]
        for x, row in enumerate(rows):
            acc, nll = row.cells["accuracy:avg"], row.cells["nll:avg"]
            if acc.mean is None or nll.mean is None:
                continue
            color = "#999999" if row.method == "base" else colors[x % len(colors)]
            if acc.std is not None or nll.std is not None:
                ax.errorbar(nll.mean, acc.mean, xerr=nll.std, yerr=acc.std, fmt="none", ecolor=color, capsize=2)
            ax.plot(nll.mean, acc.mean, "o", color=color)
            ax.annotate(row.label, (nll.mean, acc.mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if majority_avg.get(model) is not None:
            ax.axhline(majority_avg[model], ls="--", color="black", lw=1.0)
        ax.set_xlabel("mean NLL (nats/token)")
        ax.set_ylabel("mean accuracy (%)")
        ax.set_title("accuracy vs held-out NLL (mean over seeds; ± std with 2+ seeds)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    add_caption(fig, [items_text(runs, MINI_BENCHMARKS, labels), seeds_text(blocks, labels),
                      ERROR_BAR_NOTE + "; dots: the seeds' own values; a bar's mean over 4 benchmarks counts only "
                      "seeds with all four"], 200)
    return fig


def mini_chart(blocks: dict[str, list], majority_avg: dict[str, float | None], labels: dict[str, str], path: Path,
               title: str = "", runs=()) -> Path:
    """mini_figure saved to `path`."""
    fig = mini_figure(blocks, majority_avg, labels, title, runs)
    save_figure(fig, path)
    pyplot().close(fig)
    return path


USAGE = "usage: python -m abba.plots loss_curve out=PNG LABEL=RUN_DIR [LABEL=RUN_DIR ...]"


def main(argv: list[str] | None = None) -> None:
    """`loss_curve out=PNG LABEL=RUN_DIR ...`: the loss curves of the runs, one per label, saved to PNG."""
    from .cli import Refusal, UsageError, one_line_errors, parse_key_values
    from .loss_curves import loss_curve

    argv = sys.argv[1:] if argv is None else argv
    with one_line_errors(refusals=(Refusal, FileNotFoundError)):
        if not argv or argv[0] != "loss_curve":
            raise UsageError(f"name the figure to draw, loss_curve (got {' '.join(argv[:1]) or 'nothing'}); {USAGE}")
        labels = [arg.partition("=")[0] for arg in argv[1:] if arg.partition("=")[0] not in ("", "out")]
        args = parse_key_values(argv[1:], {"out": "loss_curve.png", **dict.fromkeys(labels)}, USAGE)
        out = args.pop("out")
        problem = "out= needs a file name" if not out else "no run given" if not args else next(
            (f"{label}= needs a run folder" for label, run in args.items() if not run), None)
        if out and not out.lower().endswith(".png"):  # the figure is a PNG; another name would mislead
            problem = f"out={out}: the figure is a PNG, name it *.png"
        if problem:
            raise UsageError(f"{problem}; {USAGE}")
        loss_curve({k: Path(v) for k, v in args.items()}, Path(out))
    print(f"loss curve: {out}")


if __name__ == "__main__":
    main()
