"""The benchmarked cases: one adapted linear layer, and a training step of a Llama-shaped random model.

Every adapter is attached the way training attaches it: ABBA through `abba.get_abba_model`, the baselines
through peft, each from its `configs/peft/<method>.yaml` entry with the case's overrides (rank, forward mode).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from ..methods import abba_config, peft_config
from ..model import get_abba_model, parameter_counts
from ..layout import REPO_ROOT
from ..base_model import build_model
from .measure import module_state_tensors


@dataclass
class Case:
    """A ready-to-run step plus what it keeps resident between steps (for the memory figure)."""

    name: str
    step: Callable[[], None]
    resident: Callable[[], list[torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)


def method_config(spec: Mapping[str, Any], target_modules: list[str]) -> dict[str, Any]:
    """configs/peft/<method>.yaml with the case's keys (all but `name`) and `target_modules` on top."""
    spec = dict(spec)
    base = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "configs" / "peft" / f"{spec['method']}.yaml"))
    base.update({k: v for k, v in spec.items() if k != "name"})
    base["target_modules"] = list(target_modules)
    return base


def attach(model: nn.Module, spec: Mapping[str, Any], target_modules: list[str], seed: int = 0) -> nn.Module:
    """`model` with the adapter of `spec` (frozen base); method `frozen` freezes everything and adds nothing."""
    if spec["method"] == "frozen":
        return model.requires_grad_(False)
    cfg = method_config(spec, target_modules)
    if cfg["method"] == "abba":
        return get_abba_model(model, abba_config(cfg, seed))
    from peft import get_peft_model

    peft_cfg = peft_config(cfg)
    peft_cfg.task_type = None  # a bare module, not a causal LM: no generation wrapper
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg)


def trainable_params(model: nn.Module) -> int:
    return parameter_counts(model)[0]


class _OneLinear(nn.Module):
    """A single linear layer named `lin`, the smallest module peft and ABBA can target."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.lin.weight = weight  # every case of a shape shares one frozen weight

    def forward(self, x):
        return self.lin(x)


def layer_cases(specs: list[Mapping[str, Any]], d_in: int, d_out: int, tokens: int, device: str,
                dtype: torch.dtype, seed: int = 0) -> list[Case]:
    """Forward + backward (input gradient included, as for any layer but the first) of one adapted layer."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weight = nn.Parameter((torch.randn(d_out, d_in, generator=gen) / d_in**0.5).to(device, dtype), requires_grad=False)
    x = torch.randn(tokens, d_in, generator=gen).to(device, dtype)
    grad_y = torch.randn(tokens, d_out, generator=gen).to(device, dtype)
    autocast = device == "cuda" and dtype != torch.float32
    cases = []
    for spec in specs:
        module = attach(_OneLinear(weight), spec, ["lin"], seed)

        def step(module=module):
            module.zero_grad(set_to_none=True)
            inp = x.detach().requires_grad_()
            with torch.autocast(device, dtype=dtype, enabled=autocast):
                y = module(inp)
            y.backward(grad_y)

        def resident(module=module):  # between steps: gradients are released (set to None) at each step's start
            module.zero_grad(set_to_none=True)
            return module_state_tensors(module) + [x, grad_y]

        info = {"trainable_params": trainable_params(module)}
        abba_layers = [m for m in module.modules() if m.__class__.__name__ == "ABBALinear"]
        if abba_layers:
            info["forward_mode"] = abba_layers[0].forward_mode
        cases.append(Case(spec["name"], step, resident, info))
    return cases


def random_model(model_cfg: Mapping[str, Any], dtype: torch.dtype, device: str, seed: int = 0) -> nn.Module:
    return build_model(model_cfg, dtype=dtype, seed=seed, device=device)


def model_cases(specs: list[Mapping[str, Any]], base: nn.Module, target_modules: list[str], batch: int, seq: int,
                device: str, dtype: torch.dtype, lr: float, seed: int = 0) -> list[Case]:
    """A full training step (forward, loss, backward, AdamW step) per adapter, all sharing `base`'s frozen weights.
    `lorapro` steps with abba.lorapro.LoraProAdamW, whose state is counted in the resident memory."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), generator=gen).to(device)
    autocast = device == "cuda" and dtype != torch.float32
    cases = []
    for spec in specs:
        # deepcopy with the parameters in the memo: new modules, the same frozen tensors (no copy of the weights).
        shared = {id(p): p for p in base.parameters()}
        model = attach(copy.deepcopy(base, memo=shared), spec, target_modules, seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if spec["method"] == "lorapro":  # LoRA-Pro is its optimizer: full-size m, v per adapted layer
            from ..lorapro import build_optimizer

            optimizer = build_optimizer(model, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        else:
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()

        def resident(model=model, optimizer=optimizer):  # gradients are released at each step's start
            optimizer.zero_grad(set_to_none=True)
            return module_state_tensors(model, optimizer) + [ids]

        cases.append(Case(spec["name"], step, resident, {"trainable_params": trainable_params(model)}))
    return cases
