"""Expressivity experiment (paper v4, Sec. 2.4, Fig. 2): how well LoRA and ABBA fit a matrix at equal parameters.

    python -m abba.reconstruct                                   # full grid -> results/reconstruction/
    python -m abba.reconstruct quick=true                        # reduced grid, under a minute on 2 CPU cores
    python -m abba.reconstruct output_dir=/tmp/rec size=[64,64] ranks=[8,16] fit.steps=500

Each target W (orthogonal, low_rank, sparse, random; configs/reconstruct.yaml) is fitted by Adam on
||W - W_hat||_F^2 with LoRA, W_hat = B A (rank r), and ABBA, W_hat = (B1 A1) ⊙ (B2 A2) with r1 = r2 = r/2, so both
have r (rows + cols) parameters. `lora_svd_optimal` is the Eckart–Young optimum of rank r (truncated SVD, closed
form): the gap between it and `lora` shows how well the optimiser fits. Writes <output_dir>/reconstruction.csv
(matrix,method,rank,params,rel_error with rel_error = ||W - W_hat||_F / ||W||_F; `rank` is the LoRA rank r,
i.e. r1 + r2 for ABBA) and reconstruction.png, both atomically. `quick=true` replaces the grid by `quick_settings`
(and writes to outputs/reconstruction_quick, so it never overwrites the committed full result); options given on
the command line still win.

ABBA init (`fit.abba_init`): `svd` (default) follows the paper's idea of starting from the target's principal
subspace: B1 A1 is the rank-r1 truncated SVD of W and B2 A2 starts at the all-ones matrix (plus small noise), so
W_hat starts as the best rank-r/2 approximation and descent only improves it. `random` draws all four factors
as scaled Gaussians (entries of W_hat start with unit variance, like the normalised target).
"""

from __future__ import annotations

import csv
import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from .layout import REPO_ROOT

MATRICES = ("orthogonal", "low_rank", "sparse", "random")
METHODS = ("abba", "lora", "lora_svd_optimal")
CSV_COLUMNS = ("matrix", "method", "rank", "params", "rel_error")


# ------------------------------------------------------------------------------------------------ targets
def make_target(kind: str, rows: int, cols: int, generator: torch.Generator, low_rank_rank: int = 128,
                sparse_density: float = 0.05) -> torch.Tensor:
    """A float64 target matrix of the named kind, drawn from `generator`."""
    def gaussian(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if kind == "orthogonal":  # orthonormal columns (or rows): every singular value is 1
        tall = rows >= cols
        q, r = torch.linalg.qr(gaussian(rows, cols) if tall else gaussian(cols, rows))
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed, not biased by QR's sign convention
        return q if tall else q.t()
    if kind == "low_rank":
        if low_rank_rank <= 0:
            raise ValueError(f"generators.low_rank_rank must be positive, got {low_rank_rank}")
        return gaussian(rows, low_rank_rank) @ gaussian(low_rank_rank, cols) / math.sqrt(low_rank_rank)
    if kind == "sparse":
        if not 0.0 < sparse_density <= 1.0:
            raise ValueError(f"generators.sparse_density must be in (0, 1], got {sparse_density}")
        keep = torch.rand(rows, cols, generator=generator, dtype=torch.float64) < sparse_density
        return gaussian(rows, cols) * keep
    if kind == "random":
        return gaussian(rows, cols)
    raise ValueError(f"unknown matrix kind {kind!r}; choose from {MATRICES}")


def relative_error(target: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """||W - W_hat||_F / ||W||_F in float64, over the last two dimensions."""
    target, approx = target.double(), approx.double()
    return torch.linalg.matrix_norm(target - approx) / torch.linalg.matrix_norm(target)


def svd_optimal_error(target: torch.Tensor, rank: int) -> float:
    """The smallest relative error of any rank-`rank` matrix (Eckart–Young: the truncated SVD's)."""
    s2 = torch.linalg.svdvals(target.double()).pow(2)
    return math.sqrt(s2[rank:].sum().item() / s2.sum().item())


# -------------------------------------------------------------------------------------------------- fitting
def _init_factors(method: str, target: torch.Tensor, rank: int, fit_cfg: dict[str, Any],
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Initial factors for a batch of unit-RMS targets (b, m, n), float32."""
    b, m, n = target.shape

    def gaussian(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(b, *shape, generator=generator) * std

    if method == "lora":  # std r^(-1/4) on both factors: entries of B A start with unit variance
        return [gaussian(m, rank, std=rank ** -0.25), gaussian(rank, n, std=rank ** -0.25)]
    half = rank // 2
    if fit_cfg["abba_init"] == "random":  # each product has unit-variance entries, so does their Hadamard product
        std = half ** -0.25
        return [gaussian(m, half, std=std), gaussian(half, n, std=std), gaussian(m, half, std=std),
                gaussian(half, n, std=std)]
    if fit_cfg["abba_init"] != "svd":
        raise ValueError(f"fit.abba_init must be 'svd' or 'random', got {fit_cfg['abba_init']!r}")
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    root = s[:, :half].sqrt()
    B1, A1 = u[:, :, :half] * root.unsqueeze(1), root.unsqueeze(2) * vh[:, :half]
    noise = float(fit_cfg["init_noise"])
    B2, A2 = gaussian(m, half, std=noise), gaussian(half, n, std=noise)
    B2[:, :, 0] = 1.0  # B2 A2 ~ all-ones, so W_hat starts at the rank-r1 truncated SVD of W
    A2[:, 0, :] = 1.0
    return [B1, A1, B2, A2]


def _product(method: str, factors: list[torch.Tensor]) -> torch.Tensor:
    if method == "lora":
        return factors[0] @ factors[1]
    B1, A1, B2, A2 = factors
    return (B1 @ A1) * (B2 @ A2)


def fit(targets: torch.Tensor, method: str, rank: int, fit_cfg: dict[str, Any], seed: int = 0,
        progress=None) -> torch.Tensor:
    """Fit every target in the batch (b, m, n) by Adam; return the fitted W_hat (b, m, n) in float64.

    `method`: 'lora' (rank r) or 'abba' (r1 = r2 = r/2). Targets are scaled to unit RMS entries for the fit so
    that one learning rate suits every matrix; the returned W_hat is scaled back. The batch members share
    nothing but the loop: the loss is a sum and Adam is elementwise, so each fit is independent.
    """
    if method not in ("lora", "abba"):
        raise ValueError(f"method must be 'lora' or 'abba', got {method!r}")
    if rank <= 0 or (method == "abba" and rank % 2):
        raise ValueError(f"rank must be a positive even number (ABBA uses r1 = r2 = rank/2), got {rank}")
    rms = targets.double().pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    scaled = (targets / rms).float()
    generator = torch.Generator().manual_seed(seed)
    factors = [f.requires_grad_(True) for f in _init_factors(method, scaled, rank, fit_cfg, generator)]
    steps = int(fit_cfg["steps"])
    optimizer = torch.optim.Adam(factors, lr=float(fit_cfg["lr"]))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(fit_cfg["lr"]), total_steps=steps,
                                                   pct_start=float(fit_cfg["warmup"]))
    numel = scaled.shape[-2] * scaled.shape[-1]
    for _ in range(steps):
        loss = (scaled - _product(method, factors)).pow(2).sum() / numel  # sum over the batch of rel_error^2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        return _product(method, [f.double() for f in factors]) * rms


# ---------------------------------------------------------------------------------------------- experiment
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
    """Run the grid described by `cfg` (configs/reconstruct.yaml), write the CSV and the plot, return the rows."""
    s = settings(cfg, overrides)
    rows_n, cols_n = (int(v) for v in s["size"])
    ranks = [int(r) for r in s["ranks"]]
    unknown = sorted(set(s["matrices"]) - set(MATRICES))
    if unknown or not s["matrices"]:
        raise ValueError(f"matrices must be a non-empty subset of {MATRICES}, got {s['matrices']}")
    bad = [r for r in ranks if r <= 0 or r % 2]
    if bad or not ranks:
        raise ValueError(f"ranks must be positive even numbers (ABBA uses r1 = r2 = r/2), got {ranks}")
    with torch_threads(s.get("threads")):
        results = _run_grid(s, rows_n, cols_n, ranks)

    out_dir = Path(s["output_dir"])
    write_csv(results, out_dir / "reconstruction.csv")
    plot(results, out_dir / "reconstruction.png", title=grid_title(s), caption=grid_caption(s))
    return results


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


def plot(rows: list[dict[str, Any]], path: Path, title: str = "", caption: str = "") -> Path:
    """reconstruction_figure saved to `path`."""
    from .plots import pyplot, save_figure

    fig = reconstruction_figure(rows, title, caption)
    save_figure(fig, path)
    pyplot().close(fig)
    return path


def reconstruction_figure(rows: list[dict[str, Any]], title: str = "", caption: str = ""):
    """One panel per matrix: relative error against LoRA rank r (= parameters / (rows + cols)), a line per method;
    `title` names the grid (grid_title), `caption` goes under the panels."""
    from .plots import pyplot

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
        from .plots import add_caption

        add_caption(fig, [caption], int(fig.get_figwidth() * 14))
    return fig


@hydra.main(config_path=str(REPO_ROOT / "configs"), config_name="reconstruct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

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
