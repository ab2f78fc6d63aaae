"""What a composed `configs/train.yaml` means before anything runs: `validate` refuses an inconsistent one (one
line, TrainConfigError), and the precision and ZeRO decisions the model build and the trainer build share are
derived from it here, in one place.

Test-only switches live under `debug.` (never in configs/train.yaml, never in a run folder's name): tests pass
`+debug.interrupt_at_step=N` or `+debug.dump_init_adapter=true` (DEBUG_SWITCHES; validate refuses any other), and
the code reads them with `debug_switch`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .base_model import DTYPES
from .cli import did_you_mean, first_line
from .launch import accumulation_error
from .layout import REPO_ROOT
from .methods import METHODS, abba_config, peft_config

log = logging.getLogger("abba.train")


class TrainConfigError(ValueError):
    """An inconsistent training configuration; the message is one line."""


def debug_switch(cfg: DictConfig, name: str, default: Any = None) -> Any:
    """The test-only switch `debug.<name>` (`+debug.<name>=...` on the command line), else `default`."""
    return OmegaConf.select(cfg, f"debug.{name}", default=default)


def validate(cfg: DictConfig) -> None:
    """Raise TrainConfigError for a configuration that would fail later (deep in the optimizer, the Trainer or
    datasets, with a traceback) or silently train something else; warn about `peft` keys the method ignores."""
    if cfg.peft.method not in METHODS:
        raise TrainConfigError(f"unknown peft.method {cfg.peft.method!r}; methods: {', '.join(METHODS)}")
    if cfg.data.task not in ("arithmetic", "commonsense"):
        raise TrainConfigError(f"data.task must be arithmetic or commonsense, got {cfg.data.task!r}")
    stage = OmegaConf.select(cfg, "trainer.deepspeed.zero_optimization.stage")
    if cfg.peft.method == "pissa" and stage == 3:
        raise TrainConfigError("peft=pissa cannot run under ZeRO-3: converting its final adapter to a LoRA on the "
                               "original W0 needs the full weights; use trainer=zero2 or trainer=single")
    if cfg.peft.method == "lorapro" and OmegaConf.select(cfg, "trainer.deepspeed"):
        raise TrainConfigError("peft=lorapro cannot run under DeepSpeed (trainer=zero2/zero3): ZeRO hands the optimizer "
                               "flat shards of the parameters, which separates a layer's lora_A from its lora_B; use "
                               "trainer=single (one process, or torchrun for plain data parallel)")
    if cfg.table not in (None, "table1", "table2", "mini"):
        raise TrainConfigError(f"table must be table1, table2, mini or null, got {cfg.table!r}")
    if cfg.model.dtype not in DTYPES:  # base_model.torch_dtype would raise once the model is built
        raise TrainConfigError(f"model.dtype={cfg.model.dtype}: must be one of {', '.join(DTYPES)}"
                               f"{did_you_mean(cfg.model.dtype, DTYPES)}")
    if cfg.resume and cfg.overwrite:
        raise TrainConfigError("resume=true and overwrite=true contradict each other: pick one")
    _check_debug(cfg)
    # Build the method's config object now: its validation (ABBAConfig.__post_init__, peft's configs) refuses a
    # bad value (peft.r1=abc) before anything is written or loaded, not after the model is built.
    try:
        if cfg.peft.method == "abba":
            abba_config(cfg.peft, seed=int(cfg.seed))
        elif cfg.peft.method != "full":
            peft_config(cfg.peft)
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainConfigError(f"peft: {first_line(exc, type(exc).__name__)}") from None
    # Values that would otherwise fail deep inside the optimizer, the Trainer or datasets, with a traceback.
    checks = [("peft.lr", cfg.peft.get("lr"), lambda v: v > 0, "a positive number"),
              ("peft.weight_decay", cfg.peft.get("weight_decay"), lambda v: v >= 0, "a number >= 0"),
              ("data.subset_size", cfg.data.get("subset_size"), lambda v: v > 0, "a positive integer or null"),
              ("data.heldout_size", cfg.data.get("heldout_size"), lambda v: v >= 0, "an integer >= 0 or null"),
              ("data.max_length", cfg.data.get("max_length"), lambda v: v > 0, "a positive integer"),
              ("trainer.per_device_train_batch_size", cfg.trainer.get("per_device_train_batch_size"),
               lambda v: v >= 1, "an integer >= 1"),
              ("trainer.gradient_accumulation_steps", cfg.trainer.get("gradient_accumulation_steps"),
               lambda v: v >= 1, "an integer >= 1")]
    if cfg.peft.method == "lorapro":
        checks.append(("peft.moment_dtype", cfg.peft.get("moment_dtype", "float32"),
                       lambda v: v in ("float32", "bfloat16"), "float32 or bfloat16"))
    for key, value, ok, wanted in checks:
        if value is not None and not ok(value):
            raise TrainConfigError(f"{key}={value}: must be {wanted}")
    batch_error = accumulation_error(cfg.trainer, int(os.environ.get("WORLD_SIZE", "1")))
    if batch_error:  # the paper's global batch, or a refusal: never a silently different one
        raise TrainConfigError(batch_error)
    unread = sorted(set(cfg.peft) - _read_keys(cfg.peft.method))
    if unread:  # e.g. peft=lora on an ABBA experiment: its r1, r2 stay in the config but nothing reads them
        log.warning("peft=%s does not read peft.%s (set by the experiment for another method); alpha, lr and the "
                    "other shared keys come from the experiment, not configs/peft/%s.yaml", cfg.peft.method,
                    ", peft.".join(unread), cfg.peft.method)


#: The test-only switches under `debug.` and what each takes (the code reads them with `debug_switch`).
DEBUG_SWITCHES = {"interrupt_at_step": ("a positive integer or null",
                                        lambda v: v is None or (type(v) is int and v > 0)),
                  "dump_init_adapter": ("true or false", lambda v: isinstance(v, bool))}


def _check_debug(cfg: DictConfig) -> None:
    """Refuse a test switch nothing reads (`+debug.interrupt_at_stp=2`) or a value it cannot use: either would
    otherwise be ignored silently or fail once training has started."""
    debug = cfg.get("debug")
    if debug is None:
        return
    if not OmegaConf.is_dict(debug):
        raise TrainConfigError(f"debug={debug}: must be switches, e.g. +debug.interrupt_at_step=2")
    known = [f"debug.{name}" for name in DEBUG_SWITCHES]
    for name, value in debug.items():
        if name not in DEBUG_SWITCHES:
            raise TrainConfigError(f"unknown test switch debug.{name}{did_you_mean(f'debug.{name}', known)}: "
                                   f"known: {', '.join(known)}")
        wanted, ok = DEBUG_SWITCHES[name]
        if not ok(value):
            raise TrainConfigError(f"debug.{name}={value}: must be {wanted}")


def _read_keys(method: str) -> set[str]:
    """The `peft` keys a method's config file has (what the code reads for it)."""
    path = REPO_ROOT / "configs" / "peft" / f"{method}.yaml"
    return set(OmegaConf.load(path)) | {"method", "lr", "weight_decay"} if path.is_file() else set()


def on_gpu() -> bool:
    return torch.cuda.is_available()


def zero3(cfg: DictConfig) -> bool:
    """Whether the trainer group is DeepSpeed ZeRO stage 3 (parameters partitioned over the processes)."""
    ds = cfg.trainer.deepspeed
    return ds is not None and int(ds.get("zero_optimization", {}).get("stage", 0)) == 3


def bf16(cfg: DictConfig) -> bool:
    """trainer.bf16, with `auto` = on when a CUDA GPU is present."""
    value = cfg.trainer.bf16
    return on_gpu() if value == "auto" else bool(value)


def _float32_adapter_under_deepspeed(cfg: DictConfig) -> bool:
    """DeepSpeed (ZeRO stage 0-3) training only float32 adapter tensors: ABBA with adapter_dtype float32, or a peft
    adapter (peft keeps its adapter weights float32 on a bf16 base). Full fine-tuning keeps DeepSpeed's bf16 mode,
    whose float32 master weights it needs."""
    if not OmegaConf.select(cfg, "trainer.deepspeed") or cfg.peft.method == "full":
        return False
    return cfg.peft.method != "abba" or cfg.peft.get("adapter_dtype", "float32") == "float32"


def autocast_instead_of_deepspeed_bf16(cfg: DictConfig) -> bool:
    """bf16 requested under DeepSpeed for a float32 adapter: the trainer build swaps DeepSpeed's bf16 mode for its
    torch_autocast (abba.trainer_build.training_arguments), and under ZeRO-3 the model build then builds the base
    in model.dtype explicitly (abba.train_model.zero3_init_dtype)."""
    return bf16(cfg) and _float32_adapter_under_deepspeed(cfg)
