"""ABBA -> peft LoRA / LoHa export: the exported folders load with stock peft and reproduce the ABBA model's logits.

The reference is peft's own LoRA/LoHa implementation (PeftModel.from_pretrained on a fresh copy of the base
model), not our code. Runtime: about 15 s on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_MODELS, tiny_model
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from abba import ABBAConfig, get_abba_model
from abba.export import export_loha, export_lora, main

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {  # format: (config, exporter); r1 != r2 for LoRA exercises the Khatri-Rao ordering
    "lora": (dict(r1=2, r2=3, alpha=4.0, scaling="paper", dropout=0.05), export_lora),
    "loha": (dict(r1=3, r2=3, alpha=2.0, scaling="official"), export_loha),
}


def _abba_with_random_factors(name: str, **config):
    model = get_abba_model(tiny_model(name), ABBAConfig(target_modules=TARGETS, **config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.abba_layers():
            for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("name", TINY_MODELS)
def test_export_loads_in_stock_peft_and_matches(name, fmt, tmp_path):
    config, exporter = CASES[fmt]
    abba = _abba_with_random_factors(name, **config)
    input_ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    expected = _logits(abba, input_ids)
    with abba.disable_adapter():
        base_logits = _logits(abba, input_ids)
    assert (expected - base_logits).abs().max() > 1e-2, "the adapter must change the outputs for the test to bite"

    abba.save_pretrained(tmp_path / "abba")
    exporter(tmp_path / "abba", tmp_path / fmt)  # from the saved folder, as the CLI does

    loaded = PeftModel.from_pretrained(tiny_model(name), str(tmp_path / fmt)).eval()
    torch.testing.assert_close(_logits(loaded, input_ids), expected, atol=1e-4, rtol=0)

    # Same files, key names and shapes as peft's own save_pretrained would write for the model it built.
    reference_state = {k: v.shape for k, v in get_peft_model_state_dict(loaded).items()}
    written = {k: v.shape for k, v in load_file(str(tmp_path / fmt / "adapter_model.safetensors")).items()}
    assert written == reference_state
    assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved_config = json.loads((tmp_path / fmt / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == abba.abba_config.base_model_name_or_path
    assert set(saved_config["target_modules"]) == set(TARGETS)


def test_lora_export_from_model_object_matches_merged_weights(tmp_path):
    """export_lora(model) (no files read) gives lora_B lora_A == dW in float64 for every layer."""
    abba = _abba_with_random_factors("tiny_llama", r1=2, r2=4, alpha=3.0)
    export_lora(abba, tmp_path / "lora")
    state = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    for name, layer in abba.abba_layers():
        B1, A1, B2, A2 = (p.detach().double() for p in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2))
        delta = (B1 @ A1) * (B2 @ A2) * (3.0**2 / (2 * 4) ** 0.5)  # paper scaling alpha^2 / sqrt(r1 r2)
        lora_B = state[f"base_model.model.{name}.lora_B.weight"].double()
        lora_A = state[f"base_model.model.{name}.lora_A.weight"].double()
        assert lora_A.shape == (8, layer.in_features)
        torch.testing.assert_close(lora_B @ lora_A, delta, atol=1e-5, rtol=1e-5)


def test_loha_export_needs_equal_ranks(tmp_path):
    abba = _abba_with_random_factors("tiny_llama", r1=2, r2=4)
    with pytest.raises(ValueError, match="r1 == r2"):
        export_loha(abba, tmp_path / "loha")
    assert not (tmp_path / "loha").exists()


def test_cli_exports_and_refuses_to_overwrite(tmp_path, capsys):
    abba = _abba_with_random_factors("tiny_llama", r1=2, r2=2)
    abba.save_pretrained(tmp_path / "abba")
    args = [f"adapter_dir={tmp_path / 'abba'}", "format=loha", f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert main(args) == 1  # the folder exists now
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["overwrite=true"]) == 0
    # A bad value on the command line is a usage error (abba/cli.py: exit 2); a missing folder a refusal (1).
    assert main([f"adapter_dir={tmp_path / 'abba'}", "format=ia3", f"output_dir={tmp_path / 'x'}"]) == 2
    assert main([f"adapter_dir={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'y'}"]) == 1
