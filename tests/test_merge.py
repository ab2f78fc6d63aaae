"""abba.merge: merged weights give the adapter model's logits (ABBA and peft LoRA), a float64 reference for the
folded weights, the one-time cast, and refusal (nothing written) on NaN or an occupied output folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from abba.merge import MergeError, main, merge
from conftest import tiny_model
from eval_helpers import abba_run, lora_run, one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

PROBE = ["The answer is: 18", "Please answer the following question with true or false, question: is the sky blue?"]


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("make_run", [abba_run, lora_run], ids=["abba", "peft-lora"])
def test_merged_logits_equal_adapter_logits(make_run, tokenizer, tmp_path):
    adapter_model = make_run(tmp_path / "run", tokenizer)
    merge(tmp_path / "run" / "final", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    expected, got = _logits(adapter_model, tokenizer), _logits(merged, tokenizer)
    base_gap = (_logits(tiny_model(seed=3 if make_run is abba_run else 5), tokenizer) - expected).abs().max()
    assert base_gap > 1e-2  # the adapter really changes the model, so equality below means something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    info = json.loads((tmp_path / "merged" / "merge_info.json").read_text())
    assert info["kind"] == ("abba" if make_run is abba_run else "peft")
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
    assert not any(p.name.startswith(".merged.tmp") for p in tmp_path.iterdir())


def test_abba_fold_matches_float64_formula_and_casts_once(tokenizer, tmp_path):
    adapter_model = abba_run(tmp_path / "run", tokenizer)
    name, layer = next(adapter_model.abba_layers())
    B1, A1, B2, A2 = (p.detach().double() for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2))
    expected = layer.base_layer.weight.detach().double() + layer.scaling * (B1 @ A1) * (B2 @ A2)
    merge(tmp_path / "run" / "final", tmp_path / "merged", dtype="bfloat16")
    saved = load_file(str(tmp_path / "merged" / "model.safetensors"))[f"{name}.weight"]
    assert saved.dtype == torch.bfloat16
    # float32 fold then one cast: at most one bf16 rounding step away from the float64 value.
    assert torch.allclose(saved.double(), expected, rtol=2 ** -8, atol=0)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"


def test_planted_nan_refuses_and_writes_nothing(tokenizer, tmp_path, capsys):
    abba_run(tmp_path / "run", tokenizer, nan=True)
    code = main([f"adapter_dir={tmp_path / 'run' / 'final'}", f"output_dir={tmp_path / 'merged'}"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "NaN" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_occupied_output_folder_is_refused(tokenizer, tmp_path):
    lora_run(tmp_path / "run", tokenizer)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="already exists"):
        merge(tmp_path / "run" / "final", tmp_path / "merged")
    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["keep.txt"]


def test_full_finetune_folder_is_resaved(tokenizer, tmp_path):
    model = tiny_model(seed=7)
    model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    info = merge(tmp_path / "final", tmp_path / "merged")
    assert info["kind"] == "full"
    resaved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    torch.testing.assert_close(_logits(resaved, tokenizer), _logits(model, tokenizer), atol=0, rtol=0)


def _tied_head_run(run_dir, tokenizer, kind: str, seed: int = 3):
    """RUN/final whose adapter targets lm_head, tied to the input embeddings in tiny_llama; random factors."""
    from abba import ABBAConfig, get_abba_model
    from eval_helpers import _finish_folder, write_run_config
    from peft import LoraConfig, get_peft_model

    write_run_config(run_dir, f"test_{kind}", seed, kind)
    targets = ["lm_head", "q_proj", "down_proj"]
    if kind == "abba":
        with pytest.warns(UserWarning, match="lm_head: its weight is shared with model.embed_tokens.weight"):
            model = get_abba_model(tiny_model(seed=seed), ABBAConfig(r1=4, r2=4, alpha=8, seed=seed, target_modules=targets))
    else:
        model = get_peft_model(tiny_model(seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "abba_" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(str(run_dir / "final"))
    _finish_folder(run_dir / "final", tokenizer, seed)
    return model


def test_tied_lm_head_is_untied_and_survives_save_and_reload(tokenizer, tmp_path):
    adapter_model = _tied_head_run(tmp_path / "run", tokenizer, "abba")
    with pytest.warns(UserWarning, match="shared with model.embed_tokens.weight"):
        info = merge(tmp_path / "run" / "final", tmp_path / "merged")
    assert info["untied_weights"] == ["lm_head.weight"]
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # else from_pretrained would tie lm_head to the embeddings again
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(load_file(str(tmp_path / "merged" / "model.safetensors")))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    # The input embedding is the base model's (an independent rebuild of the same random base), not W0 + dW.
    assert torch.equal(reloaded.model.embed_tokens.weight, tiny_model(seed=3).model.embed_tokens.weight)
    torch.testing.assert_close(_logits(reloaded, tokenizer), _logits(adapter_model, tokenizer), atol=1e-4, rtol=0)


def test_peft_merge_into_a_tied_lm_head_is_refused_naming_the_tie(tokenizer, tmp_path, capsys):
    # peft folds lm_head's update into the shared tensor (embeddings move too): only the logit check can catch it.
    _tied_head_run(tmp_path / "run", tokenizer, "lora", seed=5)
    code = main([f"adapter_dir={tmp_path / 'run' / 'final'}", f"output_dir={tmp_path / 'merged'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "lm_head.weight = model.embed_tokens.weight are shared between modules" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------- issue 14: a small update lost in the cast is measured and warned
def _tiny_update_run(run_dir, tokenizer, ratio=1e-3):
    """RUN/final on a bf16 tiny_llama whose every ABBA update has ||dW||_F = ratio ||W0||_F; returns the model."""
    import yaml

    from abba import ABBAConfig, get_abba_model
    from conftest import model_cfg
    from eval_helpers import write_run_config

    write_run_config(run_dir, "test_abba", 3, "abba")
    model = get_abba_model(tiny_model(dtype=torch.bfloat16, seed=3), ABBAConfig(r1=4, r2=4, alpha=8, seed=3))
    generator = torch.Generator().manual_seed(103)
    with torch.no_grad():
        for _, layer in model.abba_layers():
            for factor in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2):
                factor.copy_(torch.randn(factor.shape, generator=generator))
            scale = ratio * layer.base_layer.weight.float().norm() / layer.get_delta_weight().norm()
            layer.abba_B2.mul_(scale)
    model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(str(run_dir / "final"))
    (run_dir / "final" / "abba_model.yaml").write_text(yaml.safe_dump({**model_cfg("tiny_llama"), "dtype": "bfloat16"}))
    return model


def _float64_updates(model) -> dict:
    """{merged weight name: (W0, dW)} in float64, dW = s (B1 A1) ⊙ (B2 A2) from the formula."""
    updates = {}
    for name, layer in model.abba_layers():
        B1, A1, B2, A2 = (p.detach().double() for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2))
        updates[f"{name}.weight"] = (layer.base_layer.weight.detach().double(), layer.scaling * (B1 @ A1) * (B2 @ A2))
    return updates


def test_tiny_update_lost_in_bf16_is_reported_and_warned_float32_keeps_it(tokenizer, tmp_path):
    """Issue 14: an update of 1e-3 of each weight's norm merged into bf16 exited 0, with 85% of the entries keeping
    W0 and the update 74% wrong, and the probe check could not see it."""
    import warnings

    from abba.merge_check import UPDATE_LOSS_WARN, MergePrecisionWarning

    updates = _float64_updates(_tiny_update_run(tmp_path / "run", tokenizer))
    with pytest.warns(MergePrecisionWarning, match="dtype=float32"):
        merge(tmp_path / "run" / "final", tmp_path / "bf16", dtype="bfloat16")
    saved = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    survival = json.loads((tmp_path / "bf16" / "merge_info.json").read_text())["update_survival"]
    assert set(survival["layers"]) == set(updates)
    for name, (w0, dw) in updates.items():
        delivered = saved[name].double() - w0.to(torch.bfloat16).double()  # what the saved bf16 model applies
        error = ((delivered - dw).norm() / dw.norm()).item()
        unchanged = (saved[name] == w0.to(torch.bfloat16)).double().mean().item()
        assert survival["layers"][name]["relative_error"] == pytest.approx(error, abs=1e-3)
        assert survival["layers"][name]["unchanged_fraction"] == pytest.approx(unchanged, abs=1e-3)
        assert error > UPDATE_LOSS_WARN and unchanged > 0.5  # most of the update is gone
    assert survival["layers_over_threshold"] == len(updates)

    with warnings.catch_warnings():
        warnings.simplefilter("error", MergePrecisionWarning)
        merge(tmp_path / "run" / "final", tmp_path / "fp32", dtype="float32")
    saved = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    survival = json.loads((tmp_path / "fp32" / "merge_info.json").read_text())["update_survival"]
    for name, (w0, dw) in updates.items():
        # W0 + dW rounded once to float32: off by at most 2**-24 |W| per entry, i.e. ~1e-4 of an update this small
        error = ((saved[name].double() - w0 - dw).norm() / dw.norm()).item()
        assert saved[name].dtype == torch.float32 and error < 1e-3
        assert survival["layers"][name] == {"relative_error": 0.0, "unchanged_fraction": 0.0}


def test_seed_comes_from_the_input_folder_never_its_parent(tokenizer, tmp_path):
    """The random-init base is rebuilt with abba_model.yaml's seed (then the ABBA config's, else 0); RUN/config.yaml
    above the input folder is not read."""
    import yaml

    from abba.merge import run_seed

    lora_run(tmp_path / "run", tokenizer, seed=5)
    final = tmp_path / "run" / "final"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"seed": 9}))  # a parent that would mislead
    assert merge(final, tmp_path / "merged")["random_init_seed"] == 5
    entry = yaml.safe_load((final / "abba_model.yaml").read_text())
    (final / "abba_model.yaml").write_text(yaml.safe_dump({k: v for k, v in entry.items() if k != "seed"}))
    assert run_seed(final, "peft") == 0
    abba_run(tmp_path / "abba", tokenizer, seed=4)
    entry = yaml.safe_load((tmp_path / "abba" / "final" / "abba_model.yaml").read_text())
    (tmp_path / "abba" / "final" / "abba_model.yaml").write_text(yaml.safe_dump({**entry, "seed": None}))
    assert run_seed(tmp_path / "abba" / "final", "abba") == 4  # the ABBA adapter config's seed
