"""ABBALinear against independent computations: the float64 formula, a full SVD, numerical gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from abba import ABBAConfig, ABBALinear
from abba.layer import KhatriRaoUpdate


def formula64(layer: ABBALinear, x: torch.Tensor, scale: float) -> torch.Tensor:
    """W0 x + b + s ((B1 A1) ⊙ (B2 A2)) x, everything in float64."""
    d = lambda t: t.detach().double()  # noqa: E731
    delta = (d(layer.abba_B1) @ d(layer.abba_A1)) * (d(layer.abba_B2) @ d(layer.abba_A2))
    base = d(x) @ d(layer.base_layer.weight).t()
    if layer.base_layer.bias is not None:
        base = base + d(layer.base_layer.bias)
    return base + scale * (d(x) @ delta.t())


def random_layer(d_in=48, d_out=40, r1=3, r2=5, alpha=6.0, scaling="paper", forward="auto", bias=True, seed=0):
    torch.manual_seed(seed)
    layer = ABBALinear(nn.Linear(d_in, d_out, bias=bias),
                       ABBAConfig(r1=r1, r2=r2, alpha=alpha, scaling=scaling, forward=forward), init_seed=seed)
    with torch.no_grad():
        for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2):
            p.copy_(torch.randn_like(p) * 0.3)
    return layer


def test_svd_init_gives_zero_update_and_best_rank_r1_approximation():
    torch.manual_seed(1)
    d_out, d_in, r1 = 60, 80, 6
    # A weight with a clearly decaying spectrum, so the best rank-r1 approximation is unique.
    U, _ = torch.linalg.qr(torch.randn(d_out, d_out, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, d_in, dtype=torch.float64))
    s = 2.0 ** -torch.arange(d_out, dtype=torch.float64)
    W = (U * s) @ V[:, :d_out].t()
    base = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        base.weight.copy_(W.float())
    layer = ABBALinear(base, ABBAConfig(r1=r1, r2=4), init_seed=0)

    assert torch.count_nonzero(layer.abba_B2) == 0
    assert torch.count_nonzero(layer.get_delta_weight()) == 0
    assert torch.count_nonzero(layer.abba_A2) == layer.abba_A2.numel()  # Kaiming draw, not zeros

    Uf, Sf, Vhf = torch.linalg.svd(base.weight.detach().double(), full_matrices=False)
    best = (Uf[:, :r1] * Sf[:r1]) @ Vhf[:r1]
    B1A1 = layer.abba_B1.detach().double() @ layer.abba_A1.detach().double()
    assert torch.linalg.norm(B1A1 - best) / torch.linalg.norm(best) < 1e-4
    # The two factors share sqrt(S) evenly: B1 = U sqrt(S), A1 = sqrt(S) V^T.
    col_norms = torch.linalg.norm(layer.abba_B1.detach().double(), dim=0)
    row_norms = torch.linalg.norm(layer.abba_A1.detach().double(), dim=1)
    torch.testing.assert_close(col_norms, Sf[:r1].sqrt(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(row_norms, Sf[:r1].sqrt(), rtol=1e-4, atol=1e-6)
    # W0 itself is untouched by the init.
    torch.testing.assert_close(base.weight.detach().double(), W, rtol=0, atol=1e-6)


def test_init_is_seeded_and_kaiming_alternative_also_starts_at_zero():
    a = ABBALinear(nn.Linear(32, 24), ABBAConfig(r1=2, r2=3), init_seed=7)
    b = ABBALinear(a.base_layer, ABBAConfig(r1=2, r2=3), init_seed=7)
    torch.testing.assert_close(a.abba_A2, b.abba_A2, rtol=0, atol=0)
    torch.testing.assert_close(a.abba_B1 @ a.abba_A1, b.abba_B1 @ b.abba_A1, rtol=1e-5, atol=1e-6)
    k = ABBALinear(nn.Linear(32, 24), ABBAConfig(r1=2, r2=3, init="kaiming"), init_seed=7)
    assert torch.count_nonzero(k.get_delta_weight()) == 0
    assert torch.count_nonzero(k.abba_A1) == k.abba_A1.numel() and torch.count_nonzero(k.abba_B1) == k.abba_B1.numel()
    # Kaiming-uniform bound for A2 with a = sqrt(5), fan_in = d_in: sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in).
    assert k.abba_A2.abs().max() <= 1 / math.sqrt(32) + 1e-6


@pytest.mark.parametrize("forward", ["khatri_rao", "dense", "auto"])
@pytest.mark.parametrize("scaling", ["paper", "official"])
def test_output_matches_float64_formula(forward, scaling):
    alpha, r1, r2 = 6.0, 3, 5
    layer = random_layer(r1=r1, r2=r2, alpha=alpha, scaling=scaling, forward=forward)
    scale = alpha**2 / math.sqrt(r1 * r2) if scaling == "paper" else alpha
    assert layer.scaling == pytest.approx(scale)
    x = torch.randn(2, 7, 48)
    y = layer(x)
    torch.testing.assert_close(y.double(), formula64(layer, x, scale), rtol=1e-5, atol=1e-5)
    delta64 = scale * (layer.abba_B1.double() @ layer.abba_A1.double()) * (layer.abba_B2.double() @ layer.abba_A2.double())
    torch.testing.assert_close(layer.get_delta_weight().double(), delta64.detach(), rtol=1e-5, atol=1e-6)
    assert layer.get_delta_weight().dtype == torch.float32


def test_auto_picks_khatri_rao_only_below_the_crossover():
    # r1 r2 < d_in d_out / (d_in + d_out) -> Khatri-Rao; 64x64 gives 32.
    small = ABBALinear(nn.Linear(64, 64), ABBAConfig(r1=4, r2=4), init_seed=None)
    large = ABBALinear(nn.Linear(64, 64), ABBAConfig(r1=8, r2=4), init_seed=None)
    assert small.forward_mode == "khatri_rao" and large.forward_mode == "dense"
    with torch.device("meta"):
        big = ABBALinear(nn.Linear(2048, 8192), ABBAConfig(r1=16, r2=16), init_seed=0)
    assert big.forward_mode == "khatri_rao"


def test_khatri_rao_and_dense_agree_in_forward_and_gradients():
    kr = random_layer(forward="khatri_rao")
    dense = random_layer(forward="dense")
    x = torch.randn(3, 5, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(3, 5, 40)
    y1, y2 = kr(x1), dense(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for name in ("abba_B1", "abba_A1", "abba_B2", "abba_A2"):
        torch.testing.assert_close(getattr(kr, name).grad, getattr(dense, name).grad, rtol=1e-5, atol=1e-5)
    assert kr.base_layer.weight.grad is not None  # the layer itself was not frozen here; the model freezes it


def test_khatri_rao_backward_matches_numerical_gradients():
    torch.manual_seed(3)
    args = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True),  # x (tokens x d_in)
            torch.randn(2, 6, dtype=torch.float64, requires_grad=True),  # A1
            torch.randn(3, 6, dtype=torch.float64, requires_grad=True),  # A2
            torch.randn(5, 2, dtype=torch.float64, requires_grad=True),  # B1
            torch.randn(5, 3, dtype=torch.float64, requires_grad=True),  # B2
            0.7]
    assert torch.autograd.gradcheck(KhatriRaoUpdate.apply, args)


def test_gradients_match_float64_autograd_of_the_formula():
    layer = random_layer(forward="khatri_rao")
    x = torch.randn(9, 48)
    layer(x).square().sum().backward()
    leaves = [p.detach().double().requires_grad_() for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2)]
    B1, A1, B2, A2 = leaves
    W = layer.base_layer.weight.detach().double()
    y = x.double() @ (W + layer.scaling * (B1 @ A1) * (B2 @ A2)).t() + layer.base_layer.bias.detach().double()
    y.square().sum().backward()
    for name, ref in zip(("abba_B1", "abba_A1", "abba_B2", "abba_A2"), leaves):
        torch.testing.assert_close(getattr(layer, name).grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_half_precision_base_keeps_float32_adapter(dtype, autocast):
    layer = random_layer(forward="khatri_rao")
    layer.base_layer.to(dtype)
    assert all(p.dtype == torch.float32 for n, p in layer.named_parameters() if "abba_" in n)
    x = torch.randn(4, 48, dtype=dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        y = layer(x)
    assert y.dtype == dtype
    ref = formula64(layer, x, layer.scaling)
    assert torch.allclose(y.double(), ref, rtol=5e-2, atol=5e-2 * ref.abs().max().item())
    y.float().sum().backward()
    assert layer.abba_B2.grad is not None and layer.abba_B2.grad.dtype == torch.float32
    assert torch.isfinite(layer.abba_A1.grad).all()


def test_dropout_only_touches_the_adapter_path():
    torch.manual_seed(0)
    layer = ABBALinear(nn.Linear(16, 8), ABBAConfig(r1=2, r2=2, dropout=0.5), init_seed=0)
    with torch.no_grad():
        layer.abba_B2.normal_()
    x = torch.randn(5, 16)
    layer.eval()
    torch.testing.assert_close(layer(x).double(), formula64(layer, x, layer.scaling), rtol=1e-5, atol=1e-5)
    layer.train()
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    mask_x = nn.functional.dropout(x, 0.5, training=True)
    expected = x.double() @ layer.base_layer.weight.double().t() + layer.base_layer.bias.double()
    expected = expected + (formula64(layer, mask_x, layer.scaling) - formula64(layer, mask_x, 0.0))
    torch.testing.assert_close(y.double(), expected.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"r1": 0}, "r1"), ({"r2": -3}, "r2"), ({"alpha": 0}, "alpha"), ({"scaling": "rs"}, "scaling"),
     ({"init": "pissa"}, "init"), ({"forward": "fast"}, "forward"), ({"target_modules": []}, "target_modules"),
     ({"dropout": 1.0}, "dropout"), ({"adapter_dtype": "int8"}, "adapter_dtype")],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ABBAConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    cfg = ABBAConfig(r1=4, r2=8, alpha=24, target_modules=r".*\.(q|v)_proj", scaling="official")
    cfg.save(tmp_path)
    assert ABBAConfig.load(tmp_path) == cfg
    assert ABBAConfig(r1=16, r2=16, alpha=32).scale == pytest.approx(32**2 / 16)
    assert ABBAConfig(r1=16, r2=16, alpha=32, scaling="official").scale == 32


@pytest.mark.parametrize("forward", ["khatri_rao", "dense"])
def test_every_gradient_of_the_layer_matches_float64_autograd(forward):
    """Through the eager path training uses (update added in place into the frozen output): the gradients of x,
    W0, the bias and the four factors all equal float64 autograd of W0 x + b + s ((B1 A1) ⊙ (B2 A2)) x."""
    layer = random_layer(forward=forward)
    layer.base_layer.requires_grad_(True)
    x = torch.randn(2, 7, 48, requires_grad=True)
    g = torch.randn(2, 7, 40)
    (layer(x) * g).sum().backward()
    names = ("base_layer.weight", "base_layer.bias", "abba_B1", "abba_A1", "abba_B2", "abba_A2")
    params = dict(layer.named_parameters())
    ref = {n: params[n].detach().double().requires_grad_() for n in names}
    x64 = x.detach().double().requires_grad_()
    dW = layer.scaling * (ref["abba_B1"] @ ref["abba_A1"]) * (ref["abba_B2"] @ ref["abba_A2"])
    y = x64 @ (ref["base_layer.weight"] + dW).t() + ref["base_layer.bias"]
    (y * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    for n in names:
        torch.testing.assert_close(params[n].grad.double(), ref[n].grad, rtol=1e-5, atol=1e-5, msg=n)
