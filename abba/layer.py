"""ABBALinear: a frozen nn.Linear plus the ABBA update s * (B1 A1) ⊙ (B2 A2).

Two ways to compute the update on an input x (tokens x d_in), both rebuilding their intermediates in the backward:

* Khatri-Rao (paper Sec. 2.3): (B1 A1) ⊙ (B2 A2) = B* A*, where A* (r1 r2 x d_in) has rows A1[i] * A2[j] and
  B* (d_out x r1 r2) has columns B1[:, i] * B2[:, j]. The update is then a rank-r1 r2 LoRA, y += s * B* (A* x),
  and dW is never built (`KhatriRaoUpdate`: the activation memory of a LoRA of rank r1 r2).
* Dense: build dW = (B1 A1) ⊙ (B2 A2) (d_out x d_in) and apply it (`DenseUpdate`). Cheaper only for large r1 r2.

In eager mode the layer adds the update into the frozen layer's output in place (`_AddUpdateInto`: one GEMM with
beta = 1, no tokens x d_out temporary); the cost figures are in results/bench/ (`python -m abba.bench`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import torch
from torch import nn

from .config import ABBAConfig


def khatri_rao_rows(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """Row-wise Khatri-Rao product: (r1 x n), (r2 x n) -> (r1 r2 x n), row i*r2 + j = A1[i] * A2[j]."""
    return (A1.unsqueeze(1) * A2.unsqueeze(0)).reshape(A1.shape[0] * A2.shape[0], A1.shape[1])


def khatri_rao_cols(B1: torch.Tensor, B2: torch.Tensor) -> torch.Tensor:
    """Column-wise Khatri-Rao product: (m x r1), (m x r2) -> (m x r1 r2), column i*r2 + j = B1[:, i] * B2[:, j]."""
    return (B1.unsqueeze(2) * B2.unsqueeze(1)).reshape(B1.shape[0], B1.shape[1] * B2.shape[1])


def _reduce_pairs(g: torch.Tensor, left: torch.Tensor, right: torch.Tensor, need_left: bool, need_right: bool):
    """Gradients of `left` (p x n) and `right` (q x n) from g (p x q x n) = dL/dP where P[i, j] = left[i] * right[j].

    dL/dleft[i] = sum_j g[i, j] * right[j], dL/dright[j] = sum_i g[i, j] * left[i]. A short chain of fused
    multiply-adds over contiguous rows: no p q n temporary, and faster than einsum's batched mat-vecs here.
    """
    grad_left = grad_right = None
    if need_left:
        grad_left = g[:, 0] * right[0]
        for j in range(1, g.shape[1]):
            grad_left.addcmul_(g[:, j], right[j])
    if need_right:
        grad_right = g[0] * left[0]
        for i in range(1, g.shape[0]):
            grad_right.addcmul_(g[i], left[i])
    return grad_left, grad_right


def _kr_forward(ctx, x, A1, A2, B1, B2, scale: float, base: torch.Tensor | None = None) -> torch.Tensor:
    """KhatriRaoUpdate's forward; with `base` (_AddUpdateInto), the update is accumulated into it (beta = 1)."""
    x2 = x.reshape(-1, x.shape[-1])
    h = x2 @ khatri_rao_rows(A1, A2).t()  # (T, r1 r2)
    B_star_t = khatri_rao_rows(B1.t(), B2.t())  # B*^T as (r1 r2, d_out) rows: the GEMM reads it contiguously
    ctx.save_for_backward(x2, h, A1, A2, B1, B2)
    ctx.scale, ctx.x_shape = scale, x.shape
    if base is None:
        return torch.mm(h, B_star_t).mul_(scale).view(*x.shape[:-1], B1.shape[0])
    base.view(-1, base.shape[-1]).addmm_(h, B_star_t, alpha=scale)
    return base


def _kr_backward(ctx, grad_y: torch.Tensor, need: tuple[bool, ...] | None = None) -> tuple:
    """Gradients of (x, A1, A2, B1, B2, scale); `need` flags the first five (default: ctx.needs_input_grad)."""
    need = ctx.needs_input_grad if need is None else need
    x2, h, A1, A2, B1, B2 = ctx.saved_tensors
    r1, r2 = A1.shape[0], A2.shape[0]
    gy = grad_y.reshape(-1, grad_y.shape[-1])
    sB1 = B1 * ctx.scale  # s folded into the smallest factor, once
    grad_x = grad_A1 = grad_A2 = grad_B1 = grad_B2 = None
    if need[3] or need[4]:
        # dL/dB*^T = s h^T gy, laid out (r1, r2, d_out) so that both reductions run over contiguous rows.
        g_B = (h.t() @ gy).view(r1, r2, -1)
        grads_t = _reduce_pairs(g_B, sB1.t().contiguous(), (B2 * ctx.scale).t().contiguous(), need[3], need[4])
        del g_B
        grad_B1, grad_B2 = (g if g is None else g.t() for g in grads_t)
    if need[0] or need[1] or need[2]:
        # dL/dh = s gy B*; B* is built as rows of B*^T, several times faster than the column form.
        g_h = gy @ khatri_rao_rows(sB1.t(), B2.t()).t()  # (T, r1 r2)
        if need[0]:
            grad_x = (g_h @ khatri_rao_rows(A1, A2)).view(ctx.x_shape)
        if need[1] or need[2]:
            g_A = (g_h.t() @ x2).view(r1, r2, -1)  # dL/dA*, (r1, r2, d_in)
            grad_A1, grad_A2 = _reduce_pairs(g_A, A1, A2, need[1], need[2])
    return grad_x, grad_A1, grad_A2, grad_B1, grad_B2, None


def _dense_forward(ctx, x, A1, A2, B1, B2, scale: float, base: torch.Tensor | None = None) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    delta = (B1 @ A1).mul_(B2 @ A2)  # freed on return: the backward rebuilds it
    ctx.save_for_backward(x2, A1, A2, B1, B2)
    ctx.scale, ctx.x_shape = scale, x.shape
    if base is None:
        return torch.mm(x2, delta.t()).mul_(scale).view(*x.shape[:-1], B1.shape[0])
    base.view(-1, base.shape[-1]).addmm_(x2, delta.t(), alpha=scale)
    return base


def _dense_backward(ctx, grad_y: torch.Tensor, need: tuple[bool, ...] | None = None) -> tuple:
    need = ctx.needs_input_grad if need is None else need
    x2, A1, A2, B1, B2 = ctx.saved_tensors
    gy = grad_y.reshape(-1, grad_y.shape[-1])
    P1, P2 = B1 @ A1, B2 @ A2
    grad_x = grad_A1 = grad_A2 = grad_B1 = grad_B2 = None
    if need[0]:
        grad_x = torch.mm(gy, (P1 * P2).mul_(ctx.scale)).view(ctx.x_shape)
    if any(need[1:5]):
        G = (gy.t() @ x2).mul_(ctx.scale)  # dL/d dW, (d_out, d_in)
        if need[1] or need[3]:
            M = G * P2
            grad_A1 = B1.t() @ M if need[1] else None
            grad_B1 = M @ A1.t() if need[3] else None
            del M
        if need[2] or need[4]:
            M = G.mul_(P1)  # G is not needed any more: reuse its buffer
            grad_A2 = B2.t() @ M if need[2] else None
            grad_B2 = M @ A2.t() if need[4] else None
    return grad_x, grad_A1, grad_A2, grad_B1, grad_B2, None


class KhatriRaoUpdate(torch.autograd.Function):
    """s * (x A*^T) B*^T with A* = kr_rows(A1, A2), B* = kr_cols(B1, B2); saves x and h = x A*^T only.

    A* and B* (r1 r2 (d_in + d_out) numbers) are rebuilt in the backward, so the activation memory is that of a
    rank-r1 r2 LoRA: x (shared with the frozen layer unless a dtype cast or dropout copies it) and h (tokens x r1 r2).
    """

    forward, backward = staticmethod(_kr_forward), staticmethod(_kr_backward)


class DenseUpdate(torch.autograd.Function):
    """s * x dW^T with dW = (B1 A1) ⊙ (B2 A2); same arguments as KhatriRaoUpdate, saves x and the factors only.

    Plain autograd would keep B1 A1, B2 A2 and dW (three d_out x d_in matrices per layer) for the backward; they
    are rebuilt there instead ((r1 + r2) d_in d_out multiply-adds, small next to the tokens x d_in x d_out products).
    """

    forward, backward = staticmethod(_dense_forward), staticmethod(_dense_backward)


class _AddUpdateInto(torch.autograd.Function):
    """base + update, accumulated in place into `base` (the frozen layer's output) by a single GEMM.

    This spares a tokens x d_out temporary and an add pass (on CPU also a fresh buffer's page faults). nn.Linear's
    backward never reads its output, so overwriting it is safe; `base` comes first because autograd routes the
    gradient of a modified view through the first input.
    """

    @staticmethod
    def forward(ctx, base, khatri_rao: bool, x, A1, A2, B1, B2, scale: float):
        ctx.mark_dirty(base)
        ctx.khatri_rao = khatri_rao
        return (_kr_forward if khatri_rao else _dense_forward)(ctx, x, A1, A2, B1, B2, scale, base)

    @staticmethod
    def backward(ctx, grad_y):
        grads = (_kr_backward if ctx.khatri_rao else _dense_backward)(ctx, grad_y, ctx.needs_input_grad[2:7])
        return grad_y, None, *grads  # grads end with scale's None


def _gathered(weight: torch.Tensor):
    """A context that gathers a DeepSpeed ZeRO-3 partitioned parameter for reading; a no-op for ordinary tensors."""
    if not hasattr(weight, "ds_numel"):
        return nullcontext()
    import deepspeed  # optional dependency: only reached when the weight is already ZeRO-3 partitioned
    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)


class ABBALinear(nn.Module):
    """Wraps a frozen `base_layer` (nn.Linear) and adds s * (B1 A1) ⊙ (B2 A2) applied to dropout(x)."""

    def __init__(self, base_layer: nn.Linear, config: ABBAConfig, init_seed: int | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"ABBALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r1, self.r2 = config.r1, config.r2
        self.scaling: float = config.scale
        fan = self.in_features * self.out_features / (self.in_features + self.out_features)
        auto = "khatri_rao" if self.r1 * self.r2 < fan else "dense"  # the cheaper form (module docstring)
        self.forward_mode = auto if config.forward == "auto" else config.forward
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = self.disabled = False
        # Other parameters holding W0's tensor (tied embeddings: lm_head <-> embed_tokens), set by get_abba_model:
        # merge must not write into it. _shared_base: the shared layer while merged (a list: not a submodule).
        self.shared_with: tuple[str, ...] = ()
        self._shared_base: list[nn.Linear] = []

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

        def kaiming(t: torch.Tensor, a: float) -> None:  # drawn on CPU so that every device and rank agrees
            t.copy_(nn.init.kaiming_uniform_(torch.empty(t.shape), a=a, generator=gen))
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
        weight = self.base_layer.weight
        with _gathered(weight):  # the SVD runs inside: W may share the gathered storage
            W = weight.detach().float()
            q = min(self.r1 + 8, *W.shape)  # oversampling: near-exact for decaying spectra, near-optimal fit otherwise
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

    def _update(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """The update s dW x; with `base` (the frozen layer's output on x), base + update, reusing base's memory."""
        device = x.device.type  # under autocast the update runs in autocast's dtype, like the frozen layer
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = self.dropout(x.to(dtype))
        B1, A1, B2, A2 = (p.to(dtype) for p in (self.abba_B1, self.abba_A1, self.abba_B2, self.abba_A2))
        khatri_rao = self.forward_mode == "khatri_rao"
        # In-place accumulation into the base output in eager mode; torch.compile gets the out-of-place form
        # (AOTAutograd cannot functionalize a custom function that mutates a view, and fuses the add itself).
        if base is not None and base.dtype == dtype and base.is_contiguous() and not torch.compiler.is_compiling():
            return _AddUpdateInto.apply(base, khatri_rao, x, A1, A2, B1, B2, self.scaling)
        update = (KhatriRaoUpdate if khatri_rao else DenseUpdate).apply(x, A1, A2, B1, B2, self.scaling)
        return update if base is None else base + update.to(base.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disabled or self.merged:
            return result
        return self._update(x, result)

    # ----------------------------------------------------------------- merge
    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold dW into W0 (computed in float32, cast once to W0's dtype)."""
        if self.merged:
            warnings.warn("ABBA adapter is already merged; merging again would apply dW twice. Skipping.")
            return
        weight = self.base_layer.weight
        merged = weight.float() + self.get_delta_weight().to(weight.device)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError("NaN or inf in the merged weight: the adapter is broken, refusing to merge")
        if self.shared_with:
            # W0 is also another module's weight (or this layer sits at a second place in the model): folding in
            # place would move that module by dW too (tied embeddings). Untie: a new Linear holds W0 + dW.
            self._shared_base = [self.base_layer]
            private = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
            private.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=weight.requires_grad)
            private.bias = self.base_layer.bias  # unchanged by the merge, so it may stay shared
            self.base_layer = private
        else:
            weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("ABBA adapter is not merged; nothing to unmerge.")
            return
        if self._shared_base:  # merged into a private copy: go back to the shared layer, whose W0 never changed
            self.base_layer = self._shared_base.pop()
        else:
            weight = self.base_layer.weight
            weight.copy_((weight.float() - self.get_delta_weight().to(weight.device)).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r1={self.r1}, r2={self.r2}, "
                f"scaling={self.scaling:.4g}, forward={self.forward_mode}")
