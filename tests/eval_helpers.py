"""Adapter folders for merge/eval tests, shaped like a training run's RUN/final (contract 1) without training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import model_cfg, tiny_model


def write_run_config(run_dir: Path, experiment_name: str, seed: int, method: str, task: str = "arithmetic") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"experiment_name": experiment_name, "seed": seed, "model": model_cfg("tiny_llama"),
              "peft": {"method": method}, "data": {"task": task}, "table": None}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "run_info.json").write_text('{"method": "%s", "seed": %d}\n' % (method, seed))


def _finish_folder(final: Path, tokenizer, seed: int) -> None:
    """The tokenizer and abba_model.yaml (the base model's entry with the training seed), as training writes them."""
    tokenizer.save_pretrained(str(final))
    (final / "abba_model.yaml").write_text(yaml.safe_dump({**model_cfg("tiny_llama"), "seed": seed}))


def abba_run(run_dir: Path, tokenizer, seed: int = 3, nan: bool = False):
    """RUN/final with an ABBA adapter whose four factors are random (so dW != 0); returns the adapter model."""
    from abba import ABBAConfig, get_abba_model

    write_run_config(run_dir, "test_abba", seed, "abba")
    model = get_abba_model(tiny_model(seed=seed), ABBAConfig(r1=4, r2=4, alpha=8, seed=seed))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for _, layer in model.abba_layers():
            for factor in (layer.abba_B1, layer.abba_A1, layer.abba_B2, layer.abba_A2):
                factor.copy_(torch.randn(factor.shape, generator=generator) * 0.3)
        if nan:
            next(model.abba_layers())[1].abba_B2[0, 0] = float("nan")
    model.save_pretrained(run_dir / "final")
    _finish_folder(run_dir / "final", tokenizer, seed)
    return model


def lora_run(run_dir: Path, tokenizer, seed: int = 5):
    """RUN/final with a peft LoRA adapter whose B is random (peft initialises B = 0)."""
    from peft import LoraConfig, get_peft_model

    write_run_config(run_dir, "test_lora", seed, "lora")
    model = get_peft_model(tiny_model(seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(str(run_dir / "final"))
    _finish_folder(run_dir / "final", tokenizer, seed)
    return model


@pytest.fixture
def one_thread():
    """Tiny models generate 5-10x faster on one thread than on two busy cores (thread sync dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
