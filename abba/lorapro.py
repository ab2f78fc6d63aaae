"""LoRA-Pro (Wang, Liang, He, Wang, Tan, "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?", ICLR 2025,
arXiv 2407.18242 v3): LoRA's parameters, with the gradients of A and B replaced so that the update they make is
the closest low-rank update to full fine-tuning's gradient.

A LoRA layer computes W = W0 + s B A (B: m x r, A: r x n, s = lora_alpha / r). One step of A and B by (g_A, g_B)
moves W by s (B g_A + g_B A) to first order, the "equivalent gradient". LoRA's own gradients are
grad_A = s Bᵀ G and grad_B = s G Aᵀ, with G = dL/dW (m x n) the full fine-tuning gradient. LoRA-Pro picks
(g_A, g_B) with

    s (B g_A + g_B A) = P_B G + (I - P_B) G P_A,   P_B = B (BᵀB)⁻¹ Bᵀ,  P_A = Aᵀ (A Aᵀ)⁻¹ A,

the projection of G onto the matrices a LoRA step can make (paper Sec. 2.2, Theorem 2.1). Everything is
computed from grad_A and grad_B, never from G itself. The solutions form a family
(g_A + X A, g_B - B X) over r x r matrices X; the paper takes the X closest to LoRA's own gradients, the solution
of the Sylvester equation BᵀB X + X AAᵀ = -(1/s²) (BᵀB)⁻¹ grad_A Aᵀ (Theorem 2.2).

`LoraProAdamW` is the paper's AdamW form (App. C, Algorithm 2): Adam's moments are kept on the m x n equivalent
gradient, and Adam's step is mapped back onto A and B by the same adjustment. That makes two full-size moments per
adapted layer: the optimizer state of full fine-tuning for the adapted weights, not LoRA's r (m + n) per moment.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # bf16/fp16 inputs are computed in float32; float64 stays float64 (the tests' reference precision).
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _psd_factor(gram: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eigenvalues, eigenvectors, pseudo-inverted eigenvalues) of a symmetric PSD r x r matrix, in float64.

    Eigenvalues below r * eps * the largest are treated as zero: B = 0 (peft's init) has (BᵀB)⁺ = 0, so P_B = 0."""
    gram = gram.double()
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
    evals = evals.clamp_min(0)
    cutoff = gram.shape[0] * eps * float(evals.max()) if evals.numel() else 0.0
    safe = torch.where(evals > cutoff, evals, torch.ones_like(evals))
    inv = torch.where(evals > cutoff, 1.0 / safe, torch.zeros_like(evals))
    return evals, evecs, inv


class _Projection:
    """The X-free part of LoRA-Pro's closed form for one layer, and the Sylvester solve for X (float64 r x r)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, scaling: float):
        if A.dim() != 2 or B.dim() != 2 or B.shape[1] != A.shape[0]:
            raise ValueError(f"LoRA-Pro needs A (r x n) and B (m x r), got A {tuple(A.shape)} and B {tuple(B.shape)}")
        if not scaling:
            raise ValueError("LoRA-Pro needs a non-zero scaling s")
        self.dtype = _compute_dtype(A, B)
        eps = torch.finfo(self.dtype).eps
        self.A, self.B, self.s = A.detach().to(self.dtype), B.detach().to(self.dtype), float(scaling)
        self.lam, self.U, self.lam_inv = _psd_factor(self.B.T @ self.B, eps)   # BᵀB
        self.mu, self.V, self.mu_inv = _psd_factor(self.A @ self.A.T, eps)     # AAᵀ
        self.eps = eps

    def _small(self, M: torch.Tensor) -> torch.Tensor:
        return M.to(self.dtype)

    def sb_pinv(self, M: torch.Tensor) -> torch.Tensor:
        """(BᵀB)⁺ M for M with r rows."""
        return self._small((self.U * self.lam_inv) @ (self.U.T @ M.double()))

    def sa_pinv_right(self, M: torch.Tensor) -> torch.Tensor:
        """M (AAᵀ)⁺ for M with r columns."""
        return self._small((M.double() @ self.V) * self.mu_inv @ self.V.T)

    def base(self, grad_A: torch.Tensor, grad_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Theorem 2.1's solution at X = 0: (1/s²)(BᵀB)⁻¹ grad_A and (1/s²)(I - P_B) grad_B (AAᵀ)⁻¹."""
        gA, gB = grad_A.to(self.dtype), grad_B.to(self.dtype)
        s2 = self.s ** 2
        a0 = self.sb_pinv(gA) / s2
        # (I - P_B) grad_B without the m x m projector: grad_B - B (BᵀB)⁺ (Bᵀ grad_B).
        b0 = gB - self.B @ self.sb_pinv(self.B.T @ gB)
        return a0, self.sa_pinv_right(b0) / s2

    def solve_x(self, grad_A: torch.Tensor, grad_B: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
        """The X minimising ‖a0 + X A - grad_A‖² + ‖b0 - B X - grad_B‖²: BᵀB X + X AAᵀ = C.

        Setting the derivative to zero gives C = grad_A Aᵀ - Bᵀ grad_B - a0 Aᵀ (Bᵀ b0 = 0). For gradients of one
        G, grad_A Aᵀ = s BᵀGAᵀ = Bᵀ grad_B and C is the paper's -(1/s²)(BᵀB)⁻¹ grad_A Aᵀ; the general form keeps
        X optimal for any inputs. Solved in the eigenbases of BᵀB and AAᵀ (both symmetric PSD)."""
        C = (grad_A.to(self.dtype) - a0) @ self.A.T - self.B.T @ grad_B.to(self.dtype)
        denom = self.lam[:, None] + self.mu[None, :]
        cutoff = 2 * len(self.lam) * self.eps * float(denom.max()) if denom.numel() else 0.0
        safe = torch.where(denom > cutoff, denom, torch.ones_like(denom))
        Ct = self.U.T @ C.double() @ self.V
        Xt = torch.where(denom > cutoff, Ct / safe, torch.zeros_like(Ct))  # min-norm where both are singular
        return self._small(self.U @ Xt @ self.V.T)

    def adjusted(self, grad_A: torch.Tensor, grad_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a0, b0 = self.base(grad_A, grad_B)
        X = self.solve_x(grad_A, grad_B, a0)
        return a0 + X @ self.A, b0 - self.B @ X

    def equivalent(self, grad_A: torch.Tensor, grad_B: torch.Tensor) -> torch.Tensor:
        """s (B g_A + g_B A) = P_B G + (I - P_B) G P_A (m x n); X cancels, so it is left out."""
        a0, b0 = self.base(grad_A, grad_B)
        return self.s * (self.B @ a0 + b0 @ self.A)


def adjusted_lora_gradients(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                            scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's gradients for one LoRA layer W = W0 + scaling * B @ A (plain-gradient form).

    Args:
        A: (r, n) peft's lora_A weight; must have full row rank r (peft's Kaiming init does).
        B: (m, r) peft's lora_B weight; may be rank-deficient (B = 0 at peft's init: then P_B = 0).
        grad_A: (r, n) LoRA's gradient of A, scaling * Bᵀ G.
        grad_B: (m, r) LoRA's gradient of B, scaling * G Aᵀ.
        scaling: s (peft's `scaling`, lora_alpha / r; lora_alpha / sqrt(r) for rsLoRA). Non-zero.

    Returns:
        (g_A, g_B), shapes (r, n) and (m, r), dtype of grad_A / grad_B, with
        scaling * (B g_A + g_B A) = P_B G + (I - P_B) G P_A (P_B = B (BᵀB)⁺ Bᵀ, P_A = Aᵀ (AAᵀ)⁻¹ A) and, of all
        such pairs (g_A + X A, g_B - B X), the one closest to (grad_A, grad_B) in ‖·‖² summed.

    Raises:
        ValueError: shapes that do not form a LoRA pair, or scaling 0.

    Source: LoRA-Pro (arXiv 2407.18242 v3), Sec. 2.2, Theorems 2.1 and 2.2. The r x r algebra (BᵀB, AAᵀ,
    their pseudo-inverses, the Sylvester equation) runs in float64; the m x n-sized products in float32 (or
    float64 for float64 inputs).
    """
    if grad_A.shape != A.shape or grad_B.shape != B.shape:
        raise ValueError(f"gradient shapes {tuple(grad_A.shape)}, {tuple(grad_B.shape)} do not match "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}")
    with torch.no_grad():
        gA, gB = _Projection(A, B, scaling).adjusted(grad_A, grad_B)
    return gA.to(grad_A.dtype), gB.to(grad_B.dtype)


def equivalent_gradient(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                        scaling: float) -> torch.Tensor:
    """The (m, n) equivalent gradient P_B G + (I - P_B) G P_A of one LoRA layer from its (r, n) and (m, r)
    gradients: what Adam's moments see in `LoraProAdamW` (paper Sec. 2.1, Eq. (3) and Algorithm 2)."""
    with torch.no_grad():
        return _Projection(A, B, scaling).equivalent(grad_A, grad_B)


def lora_pairs(model: nn.Module, adapter_name: str = "default") -> list[tuple[nn.Parameter, nn.Parameter, float]]:
    """(A, B, scaling) of every peft LoRA layer of `model` that trains both factors. DoRA (an extra magnitude
    vector) is not a plain LoRA and is refused (ValueError)."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in getattr(module, "lora_A", {}):
            continue
        if module.use_dora.get(adapter_name, False):
            raise ValueError(f"{name}: LoRA-Pro applies to plain LoRA layers, not DoRA")
        A, B = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
        if A.requires_grad and B.requires_grad:
            pairs.append((A, B, float(module.scaling[adapter_name])))
    return pairs


class LoraProAdamW(torch.optim.Optimizer):
    """AdamW on LoRA-Pro's equivalent gradient (paper App. C, Algorithm 2), one param group per LoRA layer.

    Per layer and step t, with LoRA's gradients (grad_A, grad_B) as the Trainer leaves them (summed over
    gradient accumulation, averaged over data-parallel processes, clipped):
      1. g~ = P_B G + (I - P_B) G P_A from (grad_A, grad_B)              (m x n; `equivalent_gradient`)
      2. m = β1 m + (1 - β1) g~;  v = β2 v + (1 - β2) g~²;  u = (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + ε)
      3. (g_A, g_B) = adjusted_lora_gradients(A, B, s Bᵀ u, s u Aᵀ, s)   (Adam's step u, mapped onto A and B)
      4. A, B ← sqrt(1 - lr λ) (A, B) (decoupled weight decay of s B A), then A -= lr g_A, B -= lr g_B.
    Parameters outside the pairs (`others`) get plain AdamW.

    Weight decay: the authors' code shrinks A and B by sqrt(1 - lr λ) and the frozen W0 by (1 - lr λ); W0 is left
    alone here so the result stays a LoRA on the unchanged base (the paper's runs and ours use λ = 0).
    `moment_dtype`: None keeps m and v in float32 (float64 for float64 parameters); torch.bfloat16 keeps them in
    bf16, as the authors' code does, halving their memory.

    Args:
        pairs: (A, B, scaling) per layer, A (r, n), B (m, r) (`lora_pairs`).
        others: further trainable parameters (plain AdamW).
    Raises:
        ValueError: no pairs, a bad hyperparameter, or a parameter in two pairs.
    """

    def __init__(self, pairs: Sequence[tuple[nn.Parameter, nn.Parameter, float]], others: Iterable[nn.Parameter] = (),
                 lr: float = 2e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, moment_dtype: torch.dtype | None = None):
        if not pairs:
            raise ValueError("LoraProAdamW: the model has no trainable LoRA (lora_A, lora_B) pairs")
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"LoraProAdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        seen = set()
        for A, B, _ in pairs:
            if id(A) in seen or id(B) in seen:
                raise ValueError("LoraProAdamW: a parameter appears in two LoRA pairs")
            seen.update((id(A), id(B)))
        groups = [{"params": [A, B], "scaling": float(s), "lorapro": True} for A, B, s in pairs]
        rest = [p for p in others if id(p) not in seen]
        if rest:
            groups.append({"params": rest, "scaling": None, "lorapro": False})
        self.moment_dtype = moment_dtype
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _moments(self, state: dict, like: torch.Tensor, shape: tuple[int, ...]):
        if not state:
            state["step"] = 0
            dtype = self.moment_dtype or _compute_dtype(like)  # float32, float64 for float64 parameters
            state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=like.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=like.device)
        state["step"] += 1
        return state["exp_avg"], state["exp_avg_sq"], state["step"]

    def _adam_direction(self, state: dict, grad: torch.Tensor, group: dict) -> torch.Tensor:
        beta1, beta2 = group["betas"]
        m, v, t = self._moments(state, grad, tuple(grad.shape))
        g = grad.to(m.dtype)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.to(grad.dtype).sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        return (m.to(grad.dtype) / (1 - beta1 ** t)) / denom

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if not group["lorapro"]:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    update = self._adam_direction(self.state[p], p.grad.to(_compute_dtype(p.grad)), group)
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update.to(p.dtype), alpha=-lr)
                continue
            A, B = group["params"]
            if A.grad is None or B.grad is None:
                continue
            proj = _Projection(A, B, group["scaling"])
            equiv = proj.equivalent(A.grad, B.grad)                       # (m, n)
            u = self._adam_direction(self.state[A], equiv, group)        # Adam's step on W, (m, n)
            s = proj.s
            g_A, g_B = proj.adjusted(s * (proj.B.T @ u), s * (u @ proj.A.T))
            del equiv, u
            if wd:
                shrink = math.sqrt(1 - lr * wd)
                A.mul_(shrink)
                B.mul_(shrink)
            A.add_(g_A.to(A.dtype), alpha=-lr)
            B.add_(g_B.to(B.dtype), alpha=-lr)
        return loss


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                    moment_dtype: str = "float32") -> LoraProAdamW:
    """`LoraProAdamW` over every peft LoRA pair of `model`, other trainable parameters on plain AdamW."""
    pairs = lora_pairs(model)
    in_pairs = {id(p) for A, B, _ in pairs for p in (A, B)}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in in_pairs]
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}
    if moment_dtype not in dtypes:
        raise ValueError(f"peft.moment_dtype must be float32 or bfloat16, got {moment_dtype!r}")
    return LoraProAdamW(pairs, others, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        moment_dtype=dtypes[moment_dtype])


__all__ = ["LoraProAdamW", "adjusted_lora_gradients", "build_optimizer", "equivalent_gradient", "lora_pairs"]
