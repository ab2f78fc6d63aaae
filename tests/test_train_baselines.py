"""Every baseline of the paper's tables trains through the same entry point, and its final/ reloads with peft
(or transformers, for full fine-tuning) to the in-memory model's outputs. The adapters are peft's own, so the
reload is an independent check of what was saved."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from train_helpers import compose_train, run_train, single_thread

METHOD_CLASSES = {"lora": "LoraModel", "rslora": "LoraModel", "pissa": "LoraModel", "dora": "LoraModel",
                  "hira": "HiraModel", "loha": "LoHaModel"}


@pytest.mark.parametrize("method", ["lora"] + [pytest.param(m, marks=pytest.mark.slow)
                                                for m in ("rslora", "pissa", "dora", "hira", "loha", "full")])
def test_baseline_trains_and_reloads(method, excerpt_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from abba.train import train

    run_dir = tmp_path / "run"
    overrides = ["experiment=smoke_commonsense", f"peft={method}", "trainer.max_steps=2", "data.subset_size=16",
                 f"output_dir={run_dir}", f"paths.data_dir={excerpt_data}"]
    if method != "full":
        overrides.append("peft.r=4")
    with single_thread():
        loss, model = train(compose_train(*overrides))
    assert loss == loss  # finite number, not NaN
    if method == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(run_dir / "final")
        assert sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters()))
    else:
        assert type(model.base_model).__name__ == METHOD_CLASSES[method]
        config = model.peft_config["default"]
        assert config.use_rslora == (method == "rslora") if hasattr(config, "use_rslora") else True
        assert config.use_dora == (method == "dora") if hasattr(config, "use_dora") else True
        # PiSSA's final/ is converted to a plain LoRA on the original W0, so every method reloads the same way.
        reloaded = PeftModel.from_pretrained(tiny_model("tiny_llama", seed=0), run_dir / "final")
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
        # two optimizer steps moved the model away from the untrained base (an adapter that never trained,
        # e.g. LoRA's B stuck at 0, would reload "correctly" too)
        assert (trained - tiny_model("tiny_llama", seed=0)(input_ids=ids).logits).abs().max() > 1e-4


def test_pissa_init_splits_w0_into_residual_plus_adapter():
    from omegaconf import OmegaConf

    from abba.methods import apply_method

    w0 = tiny_model("tiny_llama", seed=0).model.layers[0].mlp.up_proj.weight.detach().clone()
    cfg = OmegaConf.create({"method": "pissa", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["up_proj"]})
    layer = apply_method(tiny_model("tiny_llama", seed=0), cfg, seed=0).base_model.model.model.layers[0].mlp.up_proj
    update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert (layer.base_layer.weight - w0).abs().max() > 1e-3  # the base became a residual
    torch.testing.assert_close(layer.base_layer.weight + update, w0, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_wandb_offline_logs_into_the_run_folder(excerpt_data, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=smoke_arithmetic", "trainer.max_steps=2", "logger=wandb", "logger.mode=offline",
                        f"output_dir={run_dir}"], excerpt_data, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert not (tmp_path / "wandb").exists()
