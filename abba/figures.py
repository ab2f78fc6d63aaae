"""Drawing and saving a figure: matplotlib without a display, the atomic PNG writer every figure goes through,
and the caption placed under the panels (abba.plots, abba.loss_curves, abba.reconstruct)."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save to a temporary name beside `path`, then rename (a crash never leaves half a PNG). The format is
    `path`'s suffix (.png, .pdf, .svg, ...), given explicitly: matplotlib would read it from the temporary name's
    suffix; without one (`out=loss`) it is PNG. Raises ValueError for a format matplotlib does not write."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")


def add_caption(fig, lines: list[str], width: int) -> None:
    """Caption lines under the panels (bbox_inches="tight" keeps them in the PNG); gid="caption" finds it."""
    import textwrap

    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    # Below everything already drawn (rotated tick labels reach under the axes), not at a fixed height.
    bottom = fig.get_tightbbox(fig.canvas.get_renderer()).y0 / fig.get_figheight()
    fig.text(0.5, bottom - 0.02, text, ha="center", va="top", fontsize=8, gid="caption")
