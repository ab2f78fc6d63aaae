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

from .table_registry import BENCHMARK_LABELS, MINI_BENCHMARKS


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save to a temporary name beside `path`, then rename (a crash never leaves half a PNG)."""
    from .files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


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


def add_caption(fig, lines: list[str], width: int) -> None:
    """Caption lines under the panels (bbox_inches="tight" keeps them in the PNG); gid="caption" finds it."""
    import textwrap

    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    # Below everything already drawn (rotated tick labels reach under the axes), not at a fixed height.
    bottom = fig.get_tightbbox(fig.canvas.get_renderer()).y0 / fig.get_figheight()
    fig.text(0.5, bottom - 0.02, text, ha="center", va="top", fontsize=8, gid="caption")


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


def run_description(run_dir: Path) -> dict[str, Any]:
    """What a run folder trained, from its config.yaml and run_info.json (None where they do not say): model,
    data name, training examples, optimizer steps (run_info global_step, written when training finished) and
    trainable parameters."""
    import yaml

    config_path, info_path = run_dir / "config.yaml", run_dir / "run_info.json"
    cfg = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    model = cfg.get("model") or {}
    source = model.get("name_or_path")
    return {"model": str(source).rstrip("/").split("/")[-1] if source else model.get("name"),
            "data": (cfg.get("data") or {}).get("name"), "n_train_examples": info.get("n_train_examples"),
            "steps": info.get("global_step"), "trainable_params": info.get("trainable_params")}


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def loss_figure(runs: dict[str, Path], title: str = "training loss"):
    """One line per run (`runs` maps a legend label to a run folder, or its metrics.jsonl): training loss per
    optimizer step. The title names the model and data (name, training examples) the runs share; each legend
    entry gives its run's steps and trainable parameters (and the model/data where the runs differ), read from
    the run folder's config.yaml and run_info.json ("?" where they are missing)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    described = {}
    for label, run in runs.items():
        run = Path(run)
        metrics = run / "metrics.jsonl" if run.is_dir() else run
        if not metrics.is_file():
            raise FileNotFoundError(f"no metrics.jsonl for {label}: {metrics}")
        steps, losses = read_losses(metrics)
        d = described[label] = run_description(metrics.parent)
        if d["steps"] is None and steps:  # unfinished run: run_info has no global_step yet
            d["steps"] = f"{max(steps)} logged (unfinished)"
        ax.plot(steps, losses, label=label)
    for d in described.values():
        d["model"] = d["model"] or "?"
        d["data"] = f"{d['data'] or '?'} ({_count(d['n_train_examples'])} training examples)"
    # What all runs share goes in the title, what differs in each legend entry.
    common = {key: described[next(iter(described))][key] for key in ("model", "data")
              if described and len({d[key] for d in described.values()}) == 1}
    for line, (label, d) in zip(ax.get_lines(), described.items()):
        own = " on ".join(d[key] for key in ("model", "data") if key not in common)
        steps = d["steps"] if isinstance(d["steps"], str) else _count(d["steps"])
        line.set_label(f"{label}: {_count(d['trainable_params'])} trainable params, {steps} steps"
                       + (f", {own}" if own else ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    head = " on ".join(common.values())
    ax.set_title(f"{title}: {head}" if head else title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def loss_curve(runs: dict[str, Path], path: Path, title: str = "training loss") -> Path:
    """loss_figure saved to `path`."""
    fig = loss_figure(runs, title)
    save_figure(fig, path)
    pyplot().close(fig)
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
