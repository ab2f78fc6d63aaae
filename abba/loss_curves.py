"""Training-loss curves: per run folder (or its metrics.jsonl) the loss of every optimizer step, with the model,
data, steps and trainable parameters the run's config.yaml and run_info.json record.

    python -m abba.plots loss_curve out=loss.png ABBA=outputs/x/seed0 LoRA=outputs/y/seed0   # abba.plots' command
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .figures import pyplot, save_figure
from .files import read_jsonl


def read_losses(metrics_jsonl: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) from a RUN/metrics.jsonl written by abba.trainer.MetricsCallback: the records that have a
    loss (evaluation records have none), in file order. Raises FileNotFoundError, json.JSONDecodeError."""
    records = [r for r in read_jsonl(metrics_jsonl) if r.get("loss") is not None]
    return [int(r["step"]) for r in records], [float(r["loss"]) for r in records]


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
            raise FileNotFoundError(f"no metrics.jsonl for {label}: {metrics}: pass a training run folder or its "
                                    "metrics.jsonl")
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
