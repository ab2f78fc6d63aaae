"""peft-style checks of a whole ABBA model on tiny random Llama, Mistral and Gemma-2 models (no download)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from abba import ABBAConfig, ABBALinear, get_abba_model, load_abba_model
from abba.config import LLAMA_TARGETS
from conftest import TINY_MODELS, model_cfg, tiny_model

INPUT = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11], [8, 300, 2, 64, 19, 77, 140, 21]])


def logits(model, input_ids=INPUT):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def randomized_abba(name="tiny_llama", dtype=torch.float32, seed=0, **cfg):
    """An ABBA model whose update is non-zero (B2 random), so merges and saves have something to carry."""
    model = get_abba_model(tiny_model(name, dtype=dtype, seed=seed), ABBAConfig(r1=2, r2=3, alpha=4, seed=seed, **cfg))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in model.abba_layers():
            layer.abba_B2.copy_(torch.randn(layer.abba_B2.shape, generator=gen) * 0.1)
    return model


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_target_is_wrapped_and_starts_as_the_base_model(name):
    base_logits = logits(tiny_model(name))
    model = get_abba_model(tiny_model(name), ABBAConfig(r1=2, r2=2, alpha=4))
    wrapped = {n.rsplit(".", 1)[-1] for n, _ in model.abba_layers()}
    assert wrapped == set(LLAMA_TARGETS)
    assert len(list(model.abba_layers())) == 7 * model.config.num_hidden_layers
    torch.testing.assert_close(logits(model), base_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_merge_unmerge_and_merge_and_unload_agree(name):
    model = randomized_abba(name)
    base_logits = logits(tiny_model(name))
    unmerged = logits(model)
    assert (unmerged - base_logits).abs().max() > 1e-3  # the update really changes the output
    model.merge_adapter()
    torch.testing.assert_close(logits(model), unmerged, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model), unmerged, rtol=1e-4, atol=1e-4)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, ABBALinear) for m in plain.modules())
    assert type(plain).__name__.endswith("ForCausalLM")
    torch.testing.assert_close(logits(plain), unmerged, rtol=1e-4, atol=1e-4)


def test_merged_weight_equals_w0_plus_float64_update():
    model = randomized_abba()
    name, layer = next(model.abba_layers())
    w0 = layer.base_layer.weight.detach().double().clone()
    d = lambda t: t.detach().double()  # noqa: E731
    delta = layer.scaling * (d(layer.abba_B1) @ d(layer.abba_A1)) * (d(layer.abba_B2) @ d(layer.abba_A2))
    model.merge_adapter()
    torch.testing.assert_close(layer.base_layer.weight.double(), w0 + delta, rtol=1e-5, atol=1e-6)


def test_merging_twice_warns_and_changes_nothing():
    model = randomized_abba()
    model.merge_adapter()
    once = {n: p.clone() for n, p in model.model.named_parameters()}
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()
    for n, p in model.model.named_parameters():
        assert torch.equal(p, once[n]), n


def test_non_finite_factors_make_safe_merge_raise():
    model = randomized_abba()
    _, layer = next(model.abba_layers())
    before = layer.base_layer.weight.clone()
    with torch.no_grad():
        layer.abba_A1[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged
    with torch.no_grad():
        layer.abba_A1[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_and_unload()
    # a broken last layer: nothing is merged, not even the healthy layers before it
    model = randomized_abba()
    layers = [layer for _, layer in model.abba_layers()]
    weights = [layer.base_layer.weight.clone() for layer in layers]
    with torch.no_grad():
        layers[-1].abba_B2[-1, -1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_adapter(safe_merge=True)
    assert not any(layer.merged for layer in layers)
    assert all(torch.equal(layer.base_layer.weight, w) for layer, w in zip(layers, weights))


@pytest.mark.parametrize("merged", [False, True])
def test_disable_adapter_gives_the_base_output(merged):
    model = randomized_abba()
    base_logits = logits(tiny_model())  # an independent copy of the same random base
    adapted = logits(model)
    if merged:
        model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits(model), adapted, rtol=1e-4, atol=1e-4)
    assert all(layer.merged == merged for _, layer in model.abba_layers())


def test_only_adapter_parameters_train_and_all_of_them_move():
    model = get_abba_model(tiny_model(), ABBAConfig(r1=2, r2=2, alpha=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1].startswith("abba_") for n in trainable)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(2):
        opt.zero_grad()
        model(input_ids=INPUT, labels=INPUT).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        if step == 0:
            # B2 = 0 at init: dL/dB2 is the only non-zero gradient (dL/dB1, dL/dA1, dL/dA2 carry a B2 A2 factor).
            assert all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("abba_B2"))
            assert all(torch.count_nonzero(g) == 0 for n, g in grads.items() if not n.endswith("abba_B2"))
        opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, start[n]), f"{n} did not change"
        else:
            assert p.grad is None and torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("name", TINY_MODELS)
def test_save_then_load_reproduces_outputs_and_writes_only_adapter_files(tmp_path, name):
    model = randomized_abba(name)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    n_layers = 7 * model.config.num_hidden_layers
    assert len(saved) == 4 * n_layers and all(k.rsplit(".", 1)[-1].startswith("abba_") for k in saved)
    recorded = json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == model_cfg(name)["name_or_path"]
    restored = load_abba_model(tiny_model(name), tmp_path)
    assert torch.equal(logits(restored), expected)


def test_load_rejects_missing_and_mismatched_keys(tmp_path):
    model = randomized_abba()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    key = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != key}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(KeyError, match="missing keys") as err:
        load_abba_model(tiny_model(), tmp_path)
    assert key in str(err.value)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="mismatched shapes") as err:
        load_abba_model(tiny_model(), tmp_path)
    assert key in str(err.value)


def test_target_list_matching_nothing_names_the_available_modules():
    with pytest.raises(ValueError, match="q_proj") as err:
        get_abba_model(tiny_model(), ABBAConfig(target_modules=["query_key_value"]))
    assert "query_key_value" in str(err.value) and "down_proj" in str(err.value)


def test_regex_targets_select_by_full_path():
    model = get_abba_model(tiny_model(), ABBAConfig(r1=2, r2=2, target_modules=r"model\.layers\.1\.self_attn\.(q|v)_proj"))
    assert [n for n, _ in model.abba_layers()] == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_half_precision_models_train_with_and_without_autocast(dtype, autocast):
    model = randomized_abba(dtype=dtype)
    reference = logits(randomized_abba(dtype=torch.float32))
    model.train()
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = model(input_ids=INPUT, labels=INPUT)
    assert out.logits.dtype in (dtype, torch.float32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("abba_B2")]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # Half-precision outputs stay close to the float32 model with the same weights (loose: a 2-layer net in 8-bit mantissa).
    assert (logits(model) - reference).abs().max() < 0.1 * reference.abs().max()


def test_print_trainable_parameters(capsys):
    model = get_abba_model(tiny_model(), ABBAConfig(r1=2, r2=3))
    model.print_trainable_parameters()
    # (r1 + r2) (d_out + d_in) per layer: q,o 64x64; k,v 64->32; gate,up 64->128; down 128->64; two layers.
    expected = 2 * 5 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    assert f"trainable params: {expected:,d}" in capsys.readouterr().out


def test_no_warning_on_a_clean_merge_cycle():
    model = randomized_abba()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.merge_adapter()
        model.unmerge_adapter()


# ------------------------------------------------------------- weights shared between modules (issue 10, section 2)
def _tied_lm_head_abba(name: str):
    with pytest.warns(UserWarning, match=r"lm_head: its weight is shared with model\.embed_tokens\.weight"):
        return randomized_abba(name, target_modules=["lm_head", "q_proj", "down_proj"])


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_merging_a_tied_lm_head_unties_it_and_keeps_the_input_embedding(name):
    base = tiny_model(name)
    assert base.lm_head.weight is base.model.embed_tokens.weight  # the tie under test
    emb0 = base.model.embed_tokens.weight.detach().clone()
    model = _tied_lm_head_abba(name)
    head = model.model.lm_head
    d = lambda t: t.detach().double()  # noqa: E731
    expected_head = d(head.base_layer.weight) + head.scaling * (d(head.abba_B1) @ d(head.abba_A1)) * (
        d(head.abba_B2) @ d(head.abba_A2))
    unmerged = logits(model)
    assert (unmerged - logits(base)).abs().max() > 1e-3
    model.merge_adapter()
    # Before the fix the update went into the shared tensor: embeddings moved by 6.5e-3, logits by 1.5e-2 (llama).
    assert torch.equal(model.model.model.embed_tokens.weight, emb0)
    torch.testing.assert_close(head.base_layer.weight.double(), expected_head, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-4)
    model.unmerge_adapter()  # re-tied to the untouched shared tensor
    assert head.base_layer.weight is model.model.model.embed_tokens.weight
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-4)
    plain = model.merge_and_unload()
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    assert plain.config.tie_word_embeddings is False and not plain.all_tied_weights_keys
    plain.tie_weights()  # what transformers runs on load: must not re-tie
    assert torch.equal(plain.model.embed_tokens.weight, emb0)
    torch.testing.assert_close(logits(plain), unmerged, rtol=0, atol=1e-4)


class _SharedLinears(nn.Module):
    """a and b hold one weight tensor; c is module a itself, registered a second time."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 5, bias=False), nn.Linear(6, 5, bias=False)
        self.b.weight = self.a.weight
        self.c = self.a

    def forward(self, x):
        return self.a(x), self.b(x), self.c(x)


@pytest.mark.parametrize("targets", [["a"], ["a", "b"]], ids=["a", "a+b"])
def test_every_kind_of_shared_weight_is_untied_on_merge(targets):
    torch.manual_seed(1)
    net = _SharedLinears()
    w0 = net.a.weight.detach().double().clone()
    with pytest.warns(UserWarning, match="shared with") as record:
        model = get_abba_model(net, ABBAConfig(r1=2, r2=2, alpha=2, init="kaiming", target_modules=targets))
    assert len(record) == len(targets)
    for _, layer in model.abba_layers():
        nn.init.normal_(layer.abba_B2)
    deltas = {n: layer.get_delta_weight().double() for n, layer in model.abba_layers()}
    x = torch.randn(4, 6, dtype=torch.float64)
    # The adapter model: each targeted path computes (W0 + its own dW) x, every other path W0 x.
    expected = [x @ (w0 + deltas.get(n, 0)).t() for n in ("a", "b", "c")]
    with torch.no_grad():
        adapter = model(x.float())
        merged = model.merge_and_unload()(x.float())
    for n, e, got_adapter, got_merged in zip("abc", expected, adapter, merged):
        torch.testing.assert_close(got_adapter.double(), e, rtol=0, atol=1e-5, msg=f"adapter, path {n}")
        torch.testing.assert_close(got_merged.double(), e, rtol=0, atol=1e-5, msg=f"merged, path {n}")
    assert torch.equal(net.c.weight.double(), w0)


def test_load_adapter_overwrites_the_adapter_in_place_and_casts_to_its_dtype(tmp_path):
    trained = randomized_abba()
    trained.save_pretrained(tmp_path)
    model = get_abba_model(tiny_model(), ABBAConfig(r1=2, r2=3, alpha=4, seed=5))  # another init, B2 = 0
    assert (logits(model) - logits(trained)).abs().max() > 1e-3
    factors = {n: p for n, p in model.named_parameters() if "abba_" in n}
    model.load_adapter(tmp_path)
    assert {n: p for n, p in model.named_parameters() if "abba_" in n} == factors  # the same tensors, refilled
    assert torch.equal(logits(model), logits(trained))
    half = get_abba_model(tiny_model(dtype=torch.bfloat16), ABBAConfig(r1=2, r2=3, alpha=4, adapter_dtype="base"))
    half.load_adapter(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for name, value in half.adapter_state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, saved[name].to(torch.bfloat16)), name


def test_load_adapter_refuses_what_does_not_fit_and_leaves_the_model_as_it_was(tmp_path):
    randomized_abba().save_pretrained(tmp_path)
    model = get_abba_model(tiny_model(), ABBAConfig(r1=4, r2=4, alpha=4))  # other ranks: other shapes
    before = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    with pytest.raises(ValueError, match="mismatched shapes"):
        model.load_adapter(tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        model.load_adapter(tmp_path / "missing")
    only_q = get_abba_model(tiny_model(), ABBAConfig(r1=2, r2=3, alpha=4, target_modules=["q_proj"]))
    with pytest.raises(KeyError, match="unexpected keys"):
        only_q.load_adapter(tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in model.adapter_state_dict().items())


def test_parameter_counts_count_shared_tensors_once_and_partitioned_ones_at_full_size():
    from abba.model import parameter_counts

    base = tiny_model()  # tiny_llama ties lm_head to embed_tokens: 512 x 64 counted once
    # embeddings + 2 layers (q,o 64x64; k,v 32x64; gate,up,down 128x64; 2 norms of 64) + final norm
    total = 512 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64) + 64
    assert parameter_counts(base) == (total, total)
    model = get_abba_model(base, ABBAConfig(r1=2, r2=3))
    adapter = 2 * 5 * (128 + 96 + 96 + 128 + 192 + 192 + 192)  # (r1 + r2)(d_out + d_in) per layer
    assert parameter_counts(model) == model.trainable_parameter_count() == (adapter, total + adapter)
    layer = next(model.abba_layers())[1]
    full = layer.abba_B2.numel()
    layer.abba_B2 = nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves on a rank: an empty tensor and ds_numel
    layer.abba_B2.ds_numel = full
    assert parameter_counts(model) == (adapter, total + adapter)
