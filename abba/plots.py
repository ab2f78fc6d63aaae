"""Figures: ours-vs-paper bar charts of the tables, the mini table's accuracy/NLL panels, and training-loss
curves from RUN/metrics.jsonl.

    python -m abba.tables results_dir=results output_dir=results/tables           # writes the bar charts too
    python -m abba.plots loss_curve out=loss.png ABBA=outputs/x/seed0 LoRA=outputs/y/seed0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any



def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save to a temporary name beside `path`, then rename (a crash never leaves half a PNG)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def table_bar_chart(spec: dict[str, Any], blocks: dict[str, list], path: Path, title: str = "") -> Path:
    """Grouped bars per method: ours (mean, std error bar) beside the paper's number; one panel per model and
    summary column (Avg for Table 1, each benchmark for Table 2). Methods without our runs get no ours-bar."""
    from .tables import BENCHMARK_LABELS  # here, not at the top: abba.tables imports this module lazily

    plt = pyplot()
    columns = ["avg"] if spec["avg"] else spec["benchmarks"]
    panels = [(model, col) for model in blocks for col in columns]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(max(4.5 * len(panels), 5), 4), squeeze=False)
    for ax, (model, col) in zip(axes[0], panels):
        rows = blocks[model]
        xs = range(len(rows))
        ours = [r.cells[col].mean for r in rows]
        errs = [r.cells[col].std or 0.0 for r in rows]
        paper = [r.paper.get(col) for r in rows]
        px = [x for x, p in zip(xs, paper) if p is not None]
        ox = [x for x, o in zip(xs, ours) if o is not None]
        ax.bar([x - 0.2 for x in px], [paper[x] for x in px], 0.4, label="paper", color="#bbbbbb")
        ax.bar([x + 0.2 for x in ox], [ours[x] for x in ox], 0.4, yerr=[errs[x] for x in ox], label="ours",
               color="#1f77b4", capsize=2)
        for x in set(xs) - set(ox):  # no run yet: a dash at the foot of the axis, never a zero-height bar
            ax.text(x + 0.2, 0.02, "–", ha="center", va="bottom", transform=ax.get_xaxis_transform())
        ax.set_xticks(list(xs), [r.label for r in rows], rotation=45, ha="right", fontsize=8)
        label = spec["models"].get(model, {}).get("label", model)
        ax.set_title(f"{label}: {BENCHMARK_LABELS.get(col, col)}", fontsize=10)
        ax.set_ylabel("accuracy (%)")
        values = [v for v in paper + ours if v is not None]
        if values:  # zoom in: the methods differ by a few points
            ax.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 5))
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
    plt.close(fig)
    return path


def mini_chart(blocks: dict[str, list], majority_avg: dict[str, float | None], labels: dict[str, str], path: Path,
               title: str = "") -> Path:
    """The mini table as a figure, one line of three panels per model: mean accuracy (%) over the four benchmarks
    per method (bar = mean over seeds, error bar = std, dots = the seeds; dashed line = the majority-answer rate),
    mean held-out NLL (nats/token, same encoding), and NLL against accuracy per method (does a better fit of the
    gold responses go with more correct answers?). Methods without a complete seed get no bar."""
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
                ax.bar(x, stat.mean, 0.6, yerr=stat.std or 0.0, color=color, alpha=0.75, capsize=3)
                ax.plot([x] * len(stat.values), stat.values, "o", color="black", markersize=3, zorder=3)
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
            ax.set_xticks(xs, [r.label for r in rows], rotation=45, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{labels.get(model, model)}: {ylabel.split(' (')[0]} over 4 benchmarks", fontsize=10)
        ax = axrow[2]
        for x, row in enumerate(rows):
            acc, nll = row.cells["accuracy:avg"], row.cells["nll:avg"]
            if acc.mean is None or nll.mean is None:
                continue
            color = "#999999" if row.method == "base" else colors[x % len(colors)]
            ax.errorbar(nll.mean, acc.mean, xerr=nll.std or 0.0, yerr=acc.std or 0.0, fmt="o", color=color, capsize=2)
            ax.annotate(row.label, (nll.mean, acc.mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if majority_avg.get(model) is not None:
            ax.axhline(majority_avg[model], ls="--", color="black", lw=1.0)
        ax.set_xlabel("mean NLL (nats/token)")
        ax.set_ylabel("mean accuracy (%)")
        ax.set_title("accuracy vs held-out NLL (mean ± std over seeds)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def read_losses(metrics_jsonl: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) from a RUN/metrics.jsonl written by abba.trainer.MetricsCallback."""
    steps, losses = [], []
    for line in Path(metrics_jsonl).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("loss") is not None:
                steps.append(int(record["step"]))
                losses.append(float(record["loss"]))
    return steps, losses


def loss_curve(runs: dict[str, Path], path: Path, title: str = "training loss") -> Path:
    """One line per run: `runs` maps a legend label to a run folder (or its metrics.jsonl)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in runs.items():
        run = Path(run)
        metrics = run / "metrics.jsonl" if run.is_dir() else run
        if not metrics.is_file():
            raise FileNotFoundError(f"no metrics.jsonl for {label}: {metrics}")
        steps, losses = read_losses(metrics)
        ax.plot(steps, losses, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "loss_curve":
        print("usage: python -m abba.plots loss_curve out=PNG LABEL=RUN_DIR [LABEL=RUN_DIR ...]", file=sys.stderr)
        sys.exit(2)
    args = dict(a.split("=", 1) for a in argv[1:])
    out = Path(args.pop("out", "loss_curve.png"))
    try:
        loss_curve({k: Path(v) for k, v in args.items()}, out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"loss curve: {out}")


if __name__ == "__main__":
    main()
