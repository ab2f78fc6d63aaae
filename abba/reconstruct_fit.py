"""The fits behind abba.reconstruct (paper v4, Sec. 2.4, Fig. 2): target matrices, the Adam fit of LoRA or ABBA to
one, and the relative error with its Eckart–Young bound.

LoRA fits W_hat = B A (rank r); ABBA fits W_hat = (B1 A1) ⊙ (B2 A2) with r1 = r2 = r/2, so both have r (rows + cols)
parameters. No rank-r matrix beats the truncated SVD (`svd_optimal_error`), so a fitted LoRA approaches it from
above while ABBA, whose Hadamard product can have rank up to r1 r2, can go below it.

ABBA init (`fit.abba_init`): `svd` (default) follows the paper's idea of starting from the target's principal
subspace: B1 A1 is the rank-r1 truncated SVD of W and B2 A2 starts at the all-ones matrix (plus small noise), so
W_hat starts as the best rank-r/2 approximation and descent only improves it. `random` draws all four factors
as scaled Gaussians (entries of W_hat start with unit variance, like the normalised target).
"""

from __future__ import annotations

import math
from typing import Any

import torch

MATRICES = ("orthogonal", "low_rank", "sparse", "random")


def make_target(kind: str, rows: int, cols: int, generator: torch.Generator, low_rank_rank: int = 128,
                sparse_density: float = 0.05) -> torch.Tensor:
    """A float64 target matrix (rows x cols) of the named kind (MATRICES), drawn from `generator`.

    Raises ValueError for an unknown kind, low_rank_rank <= 0 or sparse_density outside (0, 1]."""
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
    nothing but the loop: the loss is a sum and Adam is elementwise, so each fit is independent. `fit_cfg`:
    steps, lr (peak), warmup (fraction of steps), abba_init, init_noise (configs/reconstruct.yaml `fit`);
    `progress`: a tqdm bar advanced once per step. Raises ValueError for a bad method, rank or abba_init.
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
