"""LoRA-Pro (abba/lorapro.py) against independent float64 computations.

* The equivalent gradient s (B g_A + g_B A) of `adjusted_lora_gradients` equals P_B G + (I - P_B) G P_A, with G
  the autograd gradient of the full weight (a separate graph) and the projectors from numpy's pinv.
* Its X is the least-squares optimum: a brute-force lstsq over every r x r X, and over every (g_A, g_B) with the
  same equivalent gradient (no formula of the module used), finds nothing closer to LoRA's gradients.
* `LoraProAdamW` on a peft LoRA layer follows a step-by-step numpy re-computation of the paper's Algorithm 2
  (App. C) for several steps, from peft's init (B = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from abba.lorapro import LoraProAdamW, adjusted_lora_gradients, equivalent_gradient, lora_pairs

SHAPES = [(7, 5, 2), (12, 9, 3), (6, 10, 4), (16, 16, 8)]  # (m, n, r): tall, wide, square


def _problem(m, n, r, seed, zero_b=False):
    """Random W0, A, B, s and a non-quadratic loss; G from autograd on W (its own graph), LoRA grads from
    autograd on A and B."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    W0, A, B = rand(m, n), rand(r, n), (torch.zeros(m, r, dtype=torch.float64) if zero_b else rand(m, r))
    x, c, s = rand(11, n), rand(11, m), 1.7

    def loss(W):
        return (torch.tanh(x @ W.T) * c).sum() + 0.1 * (W ** 2).sum()

    W = (W0 + s * B @ A).clone().requires_grad_(True)
    (G,) = torch.autograd.grad(loss(W), W)
    A_, B_ = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
    gA, gB = torch.autograd.grad(loss(W0 + s * B_ @ A_), (A_, B_))
    return A, B, s, G, gA, gB


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("zero_b", [False, True])
def test_equivalent_gradient_is_the_projection_of_g(m, n, r, zero_b):
    A, B, s, G, gA, gB = _problem(m, n, r, seed=m * 100 + r, zero_b=zero_b)
    out_A, out_B = adjusted_lora_gradients(A, B, gA, gB, s)
    assert out_A.shape == (r, n) and out_B.shape == (m, r) and out_A.dtype == torch.float64
    An, Bn, Gn = A.numpy(), B.numpy(), G.numpy()
    P_B, P_A = Bn @ np.linalg.pinv(Bn), np.linalg.pinv(An) @ An
    target = P_B @ Gn + (np.eye(m) - P_B) @ Gn @ P_A
    achieved = s * (Bn @ out_A.numpy() + out_B.numpy() @ An)
    assert _rel(achieved, target) < 1e-8
    assert _rel(equivalent_gradient(A, B, gA, gB, s).numpy(), target) < 1e-8
    assert _rel(target, Gn) > 1e-3  # a real projection: G itself is not reachable by a rank-r step


@pytest.mark.parametrize("m,n,r", SHAPES)
def test_x_is_the_least_squares_optimum(m, n, r):
    A, B, s, _, gA, gB = _problem(m, n, r, seed=7 + m)
    out_A, out_B = (t.numpy() for t in adjusted_lora_gradients(A, B, gA, gB, s))
    An, Bn, gAn, gBn = A.numpy(), B.numpy(), gA.numpy(), gB.numpy()

    # Over X: (out_A + Y A, out_B - B Y) keeps the equivalent gradient; lstsq over vec(Y) for the closest pair.
    cols = []
    for k in range(r * r):
        E = np.zeros(r * r)
        E[k] = 1
        E = E.reshape(r, r)
        cols.append(np.concatenate([(E @ An).ravel(), (-Bn @ E).ravel()]))
    rhs = np.concatenate([(gAn - out_A).ravel(), (gBn - out_B).ravel()])
    Y = np.linalg.lstsq(np.stack(cols, 1), rhs, rcond=None)[0].reshape(r, r)
    assert np.abs(Y).max() < 1e-8 * max(1.0, np.abs(out_A).max())

    # Over every pair with the same equivalent gradient: the minimum-norm correction of LoRA's own gradients.
    ops = []
    for k in range(r * n + m * r):
        e = np.zeros(r * n + m * r)
        e[k] = 1
        dA, dB = e[:r * n].reshape(r, n), e[r * n:].reshape(m, r)
        ops.append((Bn @ dA + dB @ An).ravel())
    target = (Bn @ out_A + out_B @ An) - (Bn @ gAn + gBn @ An)
    d = np.linalg.lstsq(np.stack(ops, 1), target.ravel(), rcond=None)[0]
    assert _rel(out_A, gAn + d[:r * n].reshape(r, n)) < 1e-8
    assert _rel(out_B, gBn + d[r * n:].reshape(m, r)) < 1e-8


def test_refuses_shapes_that_are_not_a_lora_pair():
    A, B = torch.zeros(3, 5), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="A .3, 5. and B .4, 2."):
        adjusted_lora_gradients(A, B, A, B, 2.0)


class _Net(nn.Module):
    def __init__(self, n, m):
        super().__init__()
        self.lin = nn.Linear(n, m, bias=False)

    def forward(self, x):
        return self.lin(x)


def _reference_lorapro_adamw(W0, A, B, s, batches, lr, betas, eps):
    """The paper's Algorithm 2 in numpy float64, one step at a time; G from the full weight's closed-form gradient
    of the same loss (mean squared error of tanh(x Wᵀ) against y)."""
    b1, b2 = betas
    M = V = np.zeros_like(W0)
    history = []
    for t, (x, y) in enumerate(batches, start=1):
        W = W0 + s * B @ A
        out = np.tanh(x @ W.T)
        dout = 2 * (out - y) / out.size * (1 - out ** 2)
        G = dout.T @ x
        P_B, P_A = B @ np.linalg.pinv(B), np.linalg.pinv(A) @ A
        equiv = P_B @ G + (np.eye(len(B)) - P_B) @ G @ P_A
        M = b1 * M + (1 - b1) * equiv
        V = b2 * V + (1 - b2) * equiv ** 2
        u = (M / (1 - b1 ** t)) / (np.sqrt(V / (1 - b2 ** t)) + eps)
        gA, gB = s * B.T @ u, s * u @ A.T
        SB_inv, SA_inv = np.linalg.pinv(B.T @ B), np.linalg.inv(A @ A.T)
        r = len(A)
        C = -(1 / s ** 2) * SB_inv @ gA @ A.T  # Theorem 2.2: BᵀB X + X AAᵀ = C, by Kronecker vectorisation
        K = np.kron(np.eye(r), B.T @ B) + np.kron((A @ A.T).T, np.eye(r))
        X = np.linalg.solve(K, C.ravel(order="F")).reshape(r, r, order="F")
        new_gA = (1 / s ** 2) * SB_inv @ gA + X @ A
        new_gB = (1 / s ** 2) * (np.eye(len(B)) - P_B) @ gB @ SA_inv - B @ X
        A, B = A - lr * new_gA, B - lr * new_gB
        history.append((A.copy(), B.copy()))
    return history


def test_adamw_form_follows_the_papers_algorithm_step_by_step():
    from peft import LoraConfig, get_peft_model

    n, m, r, alpha = 8, 6, 3, 6
    torch.manual_seed(0)
    model = get_peft_model(_Net(n, m).double(), LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"]))
    (A_p, B_p, s), = lora_pairs(model)
    assert s == alpha / r and not B_p.detach().any()  # peft's init: B = 0
    lr, betas, eps = 2e-2, (0.9, 0.999), 1e-8
    opt = LoraProAdamW(lora_pairs(model), lr=lr, betas=betas, eps=eps)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(10, n, generator=gen, dtype=torch.float64),
                torch.randn(10, m, generator=gen, dtype=torch.float64).tanh()) for _ in range(5)]
    W0 = model.base_model.model.lin.base_layer.weight.detach().numpy().copy()
    reference = _reference_lorapro_adamw(W0, A_p.detach().numpy().copy(), B_p.detach().numpy().copy(), s,
                                         [(x.numpy(), y.numpy()) for x, y in batches], lr, betas, eps)
    for (x, y), (ref_A, ref_B) in zip(batches, reference):
        opt.zero_grad()
        ((model(x).tanh() - y) ** 2).mean().backward()
        opt.step()
        assert _rel(A_p.detach().numpy(), ref_A) < 1e-10
        assert _rel(B_p.detach().numpy(), ref_B) < 1e-10
    assert np.abs(reference[-1][1]).max() > 1e-3  # B moved away from 0: the later steps use P_B != 0
    assert len(opt.state[A_p]["exp_avg"].shape) == 2 and opt.state[A_p]["exp_avg"].shape == (m, n)


def test_lora_pairs_refuses_dora():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_Net(8, 6), LoraConfig(r=2, target_modules=["lin"], use_dora=True))
    with pytest.raises(ValueError, match="not DoRA"):
        lora_pairs(model)
