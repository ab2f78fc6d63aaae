"""ABBALinear: a frozen nn.Linear plus the ABBA update s * (B1 A1) ⊙ (B2 A2).

Two ways to compute the update on an input x (tokens x d_in):

* Khatri-Rao (paper Sec. 2.3): (B1 A1) ⊙ (B2 A2) = B* A*, where A* (r1 r2 x d_in) has rows A1[i] * A2[j]
  and B* (d_out x r1 r2) has columns B1[:, i] * B2[:, j]. The update is then a rank-r1 r2 LoRA,
  y += s * B* (A* x), and dW is never built. `KhatriRaoUpdate` below is a custom autograd function
  that keeps only x and the small r1 r2 intermediate for the backward and rebuilds A*, B* there,
  so activation memory matches a LoRA of rank r1 r2 (the factor products cost r1 r2 (d_in + d_out)).
* Dense: build dW = (B1 A1) ⊙ (B2 A2) (d_out x d_in) and apply it. Cheaper only for large r1 r2.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .config import ABBAConfig


def khatri_rao_rows(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """Row-wise Khatri-Rao product: (r1 x n), (r2 x n) -> (r1 r2 x n), row i*r2 + j = A1[i] * A2[j]."""
    return (A1.unsqueeze(1) * A2.unsqueeze(0)).reshape(A1.shape[0] * A2.shape[0], A1.shape[1])


def khatri_rao_cols(B1: torch.Tensor, B2: torch.Tensor) -> torch.Tensor:
    """Column-wise Khatri-Rao product: (m x r1), (m x r2) -> (m x r1 r2), column i*r2 + j = B1[:, i] * B2[:, j]."""
    return (B1.unsqueeze(2) * B2.unsqueeze(1)).reshape(B1.shape[0], B1.shape[1] * B2.shape[1])


class KhatriRaoUpdate(torch.autograd.Function):
    """s * (x A*^T) B*^T with A* = kr_rows(A1, A2), B* = kr_cols(B1, B2); saves x and h = x A*^T only."""

    @staticmethod
    def forward(ctx, x, A1, A2, B1, B2, scale: float):
        h = F.linear(x, khatri_rao_rows(A1, A2))  # (..., r1 r2)
        y = F.linear(h, khatri_rao_cols(B1, B2))  # (..., d_out)
        ctx.save_for_backward(x, h, A1, A2, B1, B2)
        ctx.scale = scale
        return y.mul_(scale)

    @staticmethod
    def backward(ctx, grad_y):
        x, h, A1, A2, B1, B2 = ctx.saved_tensors
        r1, r2 = A1.shape[0], A2.shape[0]
        gy = grad_y.reshape(-1, grad_y.shape[-1])
        h2 = h.reshape(-1, h.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        B_star = khatri_rao_cols(B1, B2)
        # The scale is folded into the small (tokens x r1 r2) gradient of h once.
        g_h = (gy @ B_star).mul_(ctx.scale)  # (T, R)
        grad_x = grad_A1 = grad_A2 = grad_B1 = grad_B2 = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_h @ khatri_rao_rows(A1, A2)).reshape(x.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g_A = (g_h.t() @ x2).view(r1, r2, -1)  # dL/dA*, (r1, r2, d_in)
            grad_A1 = torch.einsum("ijd,jd->id", g_A, A2) if ctx.needs_input_grad[1] else None
            grad_A2 = torch.einsum("ijd,id->jd", g_A, A1) if ctx.needs_input_grad[2] else None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            g_B = (gy.t() @ h2).mul_(ctx.scale).view(-1, r1, r2)  # dL/dB*, (d_out, r1, r2)
            grad_B1 = torch.einsum("oij,oj->oi", g_B, B2) if ctx.needs_input_grad[3] else None
            grad_B2 = torch.einsum("oij,oi->oj", g_B, B1) if ctx.needs_input_grad[4] else None
        return grad_x, grad_A1, grad_A2, grad_B1, grad_B2, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@contextmanager
def _gathered(weight: torch.Tensor):
    """Gather a DeepSpeed ZeRO-3 partitioned parameter for reading; a no-op for ordinary tensors."""
    if hasattr(weight, "ds_numel"):
        import deepspeed  # optional dependency: only reached when the weight is already ZeRO-3 partitioned

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            yield weight
    else:
        yield weight


class ABBALinear(nn.Module):
    """Wraps a frozen `base_layer` (nn.Linear) and adds s * (B1 A1) ⊙ (B2 A2) applied to dropout(x)."""

    def __init__(self, base_layer: nn.Linear, config: ABBAConfig, init_seed: int | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"ABBALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r1, self.r2 = config.r1, config.r2
        self.scaling: float = config.scale
        if config.forward == "auto":
            fan = self.in_features * self.out_features / (self.in_features + self.out_features)
            self.forward_mode = "khatri_rao" if self.r1 * self.r2 < fan else "dense"
        else:
            self.forward_mode = config.forward
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False

        weight = base_layer.weight
        dtype = torch.float32 if config.adapter_dtype == "float32" else weight.dtype
        factory = dict(device=weight.device, dtype=dtype)
        self.abba_B1 = nn.Parameter(torch.zeros(self.out_features, self.r1, **factory))
        self.abba_A1 = nn.Parameter(torch.zeros(self.r1, self.in_features, **factory))
        self.abba_B2 = nn.Parameter(torch.zeros(self.out_features, self.r2, **factory))
        self.abba_A2 = nn.Parameter(torch.zeros(self.r2, self.in_features, **factory))
        if init_seed is not None and weight.device.type != "meta":
            self.reset_parameters(config, init_seed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, config: ABBAConfig, seed: int) -> None:
        """Initialise the factors so that dW = 0 (B2 = 0) and B1 A1 carries W0's top-r1 subspace."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        kaiming = lambda t, a: t.copy_(  # noqa: E731 - drawn on CPU so every device and rank agrees
            nn.init.kaiming_uniform_(torch.empty(t.shape), a=a, generator=gen)
        )
        if config.init == "svd":
            B1, A1 = self._svd_factors(config.svd_niter, seed)
            self.abba_B1.copy_(B1)
            self.abba_A1.copy_(A1)
        else:
            kaiming(self.abba_A1, math.sqrt(5))
            # B1 gets a Kaiming draw with fan_in = r1, the scale of a layer mapping r1 -> d_out.
            kaiming(self.abba_B1, math.sqrt(5))
        kaiming(self.abba_A2, config.kaiming_a)
        self.abba_B2.zero_()

    def _svd_factors(self, niter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """B1 = U sqrt(S), A1 = sqrt(S) V^T from a rank-r1 truncated SVD of W0, in float32."""
        with _gathered(self.base_layer.weight) as w:
            W = w.detach().float()
            q = min(self.r1 + 8, *W.shape)  # oversampling makes the randomized sketch near-exact
            devices = [W.device] if W.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                U, S, V = torch.svd_lowrank(W, q=q, niter=niter)
        U, S, V = U[:, : self.r1], S[: self.r1], V[:, : self.r1]
        root = S.sqrt()
        return U * root, root.unsqueeze(1) * V.t()

    # ------------------------------------------------------------ the update
    def get_delta_weight(self) -> torch.Tensor:
        """dW = s * (B1 A1) ⊙ (B2 A2), in float32, shape (d_out, d_in)."""
        B1, A1, B2, A2 = (p.float() for p in (self.abba_B1, self.abba_A1, self.abba_B2, self.abba_A2))
        return (B1 @ A1).mul_(B2 @ A2).mul_(self.scaling)

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        x = self.dropout(x.to(dtype))
        B1, A1, B2, A2 = (p.to(dtype) for p in (self.abba_B1, self.abba_A1, self.abba_B2, self.abba_A2))
        if self.forward_mode == "khatri_rao":
            return KhatriRaoUpdate.apply(x, A1, A2, B1, B2, self.scaling)
        delta = (B1 @ A1) * (B2 @ A2)
        return F.linear(x, delta) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged:
            return result
        return result + self._update(x).to(result.dtype)

    # ----------------------------------------------------------------- merge
    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold dW into W0 (computed in float32, cast once to W0's dtype)."""
        if self.merged:
            warnings.warn("ABBA adapter is already merged; merging again would apply dW twice. Skipping.")
            return
        delta = self.get_delta_weight()
        weight = self.base_layer.weight
        merged = weight.float() + delta.to(weight.device)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError("NaN or inf in the merged weight: the adapter is broken, refusing to merge")
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("ABBA adapter is not merged; nothing to unmerge.")
            return
        weight = self.base_layer.weight
        weight.copy_((weight.float() - self.get_delta_weight().to(weight.device)).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r1={self.r1}, r2={self.r2}, "
            f"scaling={self.scaling:.4g}, forward={self.forward_mode}"
        )
