"""The reconstruction figure (results/reconstruction/reconstruction.png): relative error against LoRA rank, one
panel per target matrix, a line per method (abba.reconstruct's rows)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .figures import add_caption, pyplot, save_figure

METHODS = ("abba", "lora", "lora_svd_optimal")


def plot(rows: list[dict[str, Any]], path: Path, title: str = "", caption: str = "") -> Path:
    """reconstruction_figure saved to `path` (atomically: abba.figures.save_figure)."""
    fig = reconstruction_figure(rows, title, caption)
    save_figure(fig, path)
    pyplot().close(fig)
    return path


def reconstruction_figure(rows: list[dict[str, Any]], title: str = "", caption: str = ""):
    """One panel per matrix: relative error against LoRA rank r (= parameters / (rows + cols)), a line per method;
    `title` names the grid (grid_title), `caption` goes under the panels."""
    plt = pyplot()
    names = list(dict.fromkeys(r["matrix"] for r in rows))
    style = {"abba": dict(marker="o", color="#d62728", label="ABBA (r1 = r2 = r/2), fitted"),
             "lora": dict(marker="s", color="#1f77b4", label="LoRA (rank r), fitted"),
             "lora_svd_optimal": dict(linestyle="--", color="black", label="LoRA optimum (truncated SVD)")}
    cols = 2 if len(names) > 1 else 1
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(5 * cols, 3.6 * math.ceil(len(names) / cols)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        for method in METHODS:
            points = sorted((r["rank"], r["rel_error"]) for r in rows if r["matrix"] == name and r["method"] == method)
            if points:
                ax.plot(*zip(*points), **style[method])
        ax.set_title(name)
        ax.set_xlabel("LoRA rank r  (parameters = r (rows + cols))")
        ax.set_ylabel("relative error ||W - Ŵ||_F / ||W||_F")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if caption:
        add_caption(fig, [caption], int(fig.get_figwidth() * 14))
    return fig
