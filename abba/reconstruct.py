"""Expressivity experiment (paper v4, Sec. 2.4, Fig. 2): how well LoRA and ABBA fit a matrix at equal parameters.

    python -m abba.reconstruct                                   # full grid -> results/reconstruction/
    python -m abba.reconstruct quick=true                        # reduced grid, under a minute on 2 CPU cores
    python -m abba.reconstruct output_dir=/tmp/rec size=[64,64] ranks=[8,16] fit.steps=500

Each target W (orthogonal, low_rank, sparse, random; configs/reconstruct.yaml) is fitted by Adam on
||W - W_hat||_F^2 with LoRA, W_hat = B A (rank r), and ABBA, W_hat = (B1 A1) ⊙ (B2 A2) with r1 = r2 = r/2, so both
have r (rows + cols) parameters (abba/reconstruct_fit.py, which also explains the ABBA init). `lora_svd_optimal` is
the Eckart–Young optimum of rank r (truncated SVD, closed form): the gap between it and `lora` shows how well the
optimiser fits. Writes <output_dir>/reconstruction.csv (matrix,method,rank,params,rel_error with rel_error =
||W - W_hat||_F / ||W||_F; `rank` is the LoRA rank r, i.e. r1 + r2 for ABBA) and reconstruction.png
(abba/reconstruct_plot.py), both atomically. `quick=true` replaces the grid by `quick_settings` (and writes to
outputs/reconstruction_quick, so it never overwrites the committed full result); options given on the command line
still win.

This file owns the grid: the settings, the run over every (rank, method), the CSV and the grid's name. Failures
(abba/cli.py): a bad setting exits 2, an output_dir that is (or lies under) a file exits 1, before anything is fitted.
"""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from .cli import Refusal, UsageError, one_line_errors
from .layout import REPO_ROOT
from .reconstruct_fit import MATRICES, fit, make_target, relative_error, svd_optimal_error
from .reconstruct_plot import METHODS, plot

CSV_COLUMNS = ("matrix", "method", "rank", "params", "rel_error")


def settings(cfg, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The plain settings: with quick=true, `quick_settings` merged on top (lists are replaced), then the
    command-line `overrides` again, so that `quick=true output_dir=X ranks=[8]` means what it says."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    merged = OmegaConf.merge(cfg, cfg.quick_settings) if cfg.get("quick") else cfg
    explicit = [o.lstrip("+") for o in overrides if not o.startswith("~")]
    if explicit:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(explicit))
    out = OmegaConf.to_container(merged, resolve=True)
    for key in ("quick_settings", "hydra", "defaults"):
        out.pop(key, None)
    return out


def run(cfg, overrides: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Run the grid described by `cfg` (configs/reconstruct.yaml), write the CSV and the plot, return the rows.

    Raises UsageError (a ValueError) for a bad grid, Refusal for an output_dir that is or lies under a file."""
    s = settings(cfg, overrides)
    rows_n, cols_n = (int(v) for v in s["size"])
    ranks = [int(r) for r in s["ranks"]]
    unknown = sorted(set(s["matrices"]) - set(MATRICES))
    if unknown or not s["matrices"]:
        raise UsageError(f"matrices must be a non-empty subset of {MATRICES}, got {s['matrices']}")
    bad = [r for r in ranks if r <= 0 or r % 2]
    if bad or not ranks:
        raise UsageError(f"ranks must be positive even numbers (ABBA uses r1 = r2 = r/2), got {ranks}")
    out_dir = Path(s["output_dir"])
    check_output_dir(out_dir)
    with torch_threads(s.get("threads")):
        results = _run_grid(s, rows_n, cols_n, ranks)

    write_csv(results, out_dir / "reconstruction.csv")
    plot(results, out_dir / "reconstruction.png", title=grid_title(s), caption=grid_caption(s))
    return results


def check_output_dir(out_dir: Path) -> None:
    """Raise Refusal when `out_dir` is a file or lies under one: said at once, not after minutes of fitting."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                where = f"output_dir={out_dir}" + (f": {folder}" if folder != out_dir else "")
                raise Refusal(f"{where} is a file, not a folder: pass a folder (one that is missing is created)")
            return


def _grid(s: dict[str, Any]) -> str:
    ranks = [int(r) for r in s["ranks"]]
    return (f"{s['size'][0]} x {s['size'][1]} targets (low_rank generator rank {s['generators']['low_rank_rank']}), "
            f"ranks {min(ranks)}-{max(ranks)}, {s['fit']['steps']} Adam steps, seed {s['seed']}")


def _full_settings() -> dict[str, Any]:
    """configs/reconstruct.yaml without command-line options: the full grid the README quotes."""
    from omegaconf import OmegaConf

    return settings(OmegaConf.load(REPO_ROOT / "configs" / "reconstruct.yaml"))


def grid_name(s: dict[str, Any]) -> str:
    """'quick grid (quick=true)', 'full grid' (the config's own grid), or 'custom grid' (options changed it)."""
    if s.get("quick"):
        return "quick grid (quick=true)"
    full = _full_settings()
    keys = ("size", "ranks", "matrices", "generators", "fit", "seed")
    return "full grid" if all(s.get(k) == full.get(k) for k in keys) else "custom grid"


def grid_title(s: dict[str, Any]) -> str:
    return f"{grid_name(s)}: {_grid(s)}"


def grid_caption(s: dict[str, Any]) -> str:
    """Under a quick or custom grid: the README's numbers come from the full grid, which this is not."""
    name = grid_name(s)
    if name == "full grid":
        return ""
    return (f"A {name.split(' (')[0]}, not the full grid that the README quotes (results/reconstruction/: "
            f"{_grid(_full_settings())}); the methods can order differently on the two grids (on low_rank, for one).")


@contextmanager
def torch_threads(count: int | None):
    """Limit torch's intra-op threads inside the block (None: leave as is). Small matrix products gain nothing
    from more threads, and on a busy machine their synchronisation costs many times the arithmetic."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_grid(s: dict[str, Any], rows_n: int, cols_n: int, ranks: list[int]) -> list[dict[str, Any]]:
    """Draw the targets, then fit every rank with both methods (all matrices in one batch)."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(int(s["seed"]))
    gen = s["generators"]
    names = list(s["matrices"])
    targets = torch.stack([make_target(name, rows_n, cols_n, generator, int(gen["low_rank_rank"]),
                                       float(gen["sparse_density"])) for name in names])

    results: list[dict[str, Any]] = []
    steps = int(s["fit"]["steps"])
    bar = tqdm(total=2 * len(ranks) * steps, desc=f"reconstruct {rows_n}x{cols_n}", unit="step", mininterval=1.0)
    with bar:
        for rank in ranks:
            params = rank * (rows_n + cols_n)
            for i, name in enumerate(names):
                results.append(_row(name, "lora_svd_optimal", rank, params, svd_optimal_error(targets[i], rank)))
            for method in ("abba", "lora"):
                bar.set_postfix(rank=rank, method=method)
                approx = fit(targets, method, rank, s["fit"], seed=int(s["seed"]) + rank, progress=bar)
                for name, err in zip(names, relative_error(targets, approx).tolist()):
                    results.append(_row(name, method, rank, params, err))
    return results


def _row(matrix: str, method: str, rank: int, params: int, rel_error: float) -> dict[str, Any]:
    return {"matrix": matrix, "method": method, "rank": rank, "params": params, "rel_error": rel_error}


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    from .files import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "rel_error": f"{row['rel_error']:.6f}"})
    write_text(path, buffer.getvalue())
    return path


@hydra.main(config_path=str(REPO_ROOT / "configs"), config_name="reconstruct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    # Bad values (make_target's and fit's ValueErrors included) exit 2; an unwritable output_dir exits 1.
    with one_line_errors(usage=(ValueError,), refusals=(Refusal, OSError),
                         on_interrupt="interrupted: nothing was written (the CSV and figure come last): run the same "
                                      "command again"):
        _print_summary(run(cfg, list(HydraConfig.get().overrides.task)))


def _print_summary(rows: list[dict[str, Any]]) -> None:
    """A compact table on stdout: rel_error per matrix and rank for each method."""
    ranks = sorted({r["rank"] for r in rows})
    for name in dict.fromkeys(r["matrix"] for r in rows):
        print(f"{name}: rank " + " ".join(f"{k:>6d}" for k in ranks))
        for method in METHODS:
            errs = {r["rank"]: r["rel_error"] for r in rows if r["matrix"] == name and r["method"] == method}
            print(f"  {method:>17s} " + " ".join(f"{errs[k]:6.3f}" for k in ranks))


if __name__ == "__main__":
    from .hydra_check import exit_on_bad_command_line

    exit_on_bad_command_line(REPO_ROOT / "configs", "reconstruct")
    main()
