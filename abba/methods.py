"""Attach the adapter named by a `peft` config group entry: ABBA, a peft baseline, or full fine-tuning.

    from abba.methods import apply_method
    model = apply_method(base_model, cfg.peft, seed=cfg.seed)

Baselines (paper v4, Tables 1-2) map onto peft as follows: LoRA = LoraConfig; rsLoRA = LoraConfig(use_rslora=True);
PiSSA = LoraConfig(init_lora_weights="pissa_niter_<n>"); DoRA = LoraConfig(use_dora=True); HiRA = HiraConfig
(dW = W0 ⊙ BA); LoHa = LoHaConfig. LoRA-Pro = a plain LoraConfig here; the method is its optimizer
(abba.lorapro.LoraProAdamW, which abba.trainer.AdapterTrainer builds for peft.method=lorapro), so its adapter is an
ordinary LoRA for merging and loading. `full` trains every parameter.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .config import ABBAConfig
from .model import ABBAModel, get_abba_model

METHODS = ("abba", "lora", "rslora", "pissa", "dora", "hira", "loha", "lorapro", "full")
_ABBA_KEYS = ("r1", "r2", "alpha", "dropout", "target_modules", "scaling", "init", "forward", "kaiming_a",
              "adapter_dtype", "svd_niter")


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def abba_config(peft_cfg: Mapping[str, Any], seed: int) -> ABBAConfig:
    cfg = _plain(peft_cfg)
    return ABBAConfig(**{k: cfg[k] for k in _ABBA_KEYS if cfg.get(k) is not None}, seed=seed)


def peft_config(peft_cfg: Mapping[str, Any]):
    """The peft config object for a baseline method."""
    from peft import HiraConfig, LoHaConfig, LoraConfig

    cfg = _plain(peft_cfg)
    method, targets = cfg["method"], list(cfg["target_modules"])
    if method in ("lora", "rslora", "pissa", "dora", "lorapro"):
        init = True if method != "pissa" else f"pissa_niter_{cfg.get('pissa_niter', 4)}"
        return LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg.get("dropout", 0.0),
                          target_modules=targets, use_rslora=method == "rslora", use_dora=method == "dora",
                          init_lora_weights=init, task_type="CAUSAL_LM")
    if method == "hira":
        return HiraConfig(r=cfg["r"], hira_dropout=cfg.get("dropout", 0.0), target_modules=targets, task_type="CAUSAL_LM")
    if method == "loha":
        return LoHaConfig(r=cfg["r"], alpha=cfg["alpha"], module_dropout=cfg.get("dropout", 0.0),
                          target_modules=targets, task_type="CAUSAL_LM")
    raise ValueError(f"peft.method={method!r} is not a peft baseline; methods: {', '.join(METHODS)}")


def apply_method(model: nn.Module, peft_cfg: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """`model` with the configured adapter attached (base frozen), or fully trainable for `full`."""
    method = peft_cfg["method"]
    if method not in METHODS:
        raise ValueError(f"unknown peft.method {method!r}; methods: {', '.join(METHODS)}")
    if method == "abba":
        return get_abba_model(model, abba_config(peft_cfg, seed))
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):  # adapter init draws from its own seeded stream
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config(peft_cfg))


def is_abba(model: nn.Module) -> bool:
    return isinstance(model, ABBAModel)


__all__ = ["METHODS", "abba_config", "apply_method", "is_abba", "peft_config"]
