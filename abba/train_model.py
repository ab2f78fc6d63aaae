"""The model a training run trains: the tokenizer and base model of the `model` group, with the `peft` group's
method attached (abba.methods), partitioned the right way under DeepSpeed ZeRO-3; and, once trained, its held-out
NLL (the number hyperparameter sweeps choose by).

Under ZeRO-3 the base is created inside transformers' deepspeed.zero.Init (registered when TrainingArguments are
created, abba.trainer_build), so `build` must run after them.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext

import torch
from omegaconf import DictConfig

from .base_model import build_model, load_tokenizer, torch_dtype
from .cli import first_line
from .gguf_source import ModelSourceError
from .methods import apply_method
from .train_config import TrainConfigError, autocast_instead_of_deepspeed_bf16, zero3


def single_process_weights(cfg: DictConfig) -> dict[str, torch.Tensor] | None:
    """The random base weights a single process draws, when the run will build them partitioned (ZeRO-3), else None.

    Random weights drawn under deepspeed.zero.Init differ from a single process's draw; keep runs comparable
    across world sizes by drawing them the single-process way first (random_init is for tests and benchmarks).
    Call it before TrainingArguments exist: afterwards transformers would build this model partitioned too."""
    if not (cfg.model.random_init and zero3(cfg)):
        return None
    return build_model(cfg.model, dtype=torch_dtype(cfg.model.dtype), seed=int(cfg.seed)).state_dict()


def build(cfg: DictConfig, is_main: bool, weights: dict[str, torch.Tensor] | None = None):
    """(model with the method attached, tokenizer). `weights`: single_process_weights(cfg), copied into the
    partitioned base. Raises ModelSourceError (files missing or unreachable), TrainConfigError (the method does
    not fit the model, e.g. target_modules matching no layer)."""
    tokenizer = _load("tokenizer", cfg.model, lambda: load_tokenizer(cfg.model))
    dtype = torch_dtype(cfg.model.dtype)
    with zero3_init_dtype(dtype) if zero3(cfg) and autocast_instead_of_deepspeed_bf16(cfg) else nullcontext():
        # ZeRO-3: built partitioned
        base = _load("weights", cfg.model, lambda: build_model(cfg.model, dtype=dtype, seed=int(cfg.seed)))
    if weights is not None:
        copy_into_zero3(base, weights, is_main)
    if cfg.trainer.activation_checkpointing and cfg.peft.method != "full":
        base.enable_input_require_grads()  # a frozen embedding would cut the checkpointed graph
    try:
        model = apply_method(base, cfg.peft, seed=int(cfg.seed))
    except ValueError as exc:  # e.g. target_modules that match no layer of this model
        raise TrainConfigError(f"peft: {first_line(exc, 'cannot attach the adapter')}") from None
    return model, tokenizer


def _load(what: str, model_cfg, load):
    """`load()`, with a failure to find or fetch the files turned into one ModelSourceError line."""
    try:
        return load()
    except (OSError, ValueError) as exc:  # missing/unreachable files (OSError), unreadable config.json (ValueError)
        raise ModelSourceError(f"cannot load the {what} of model {model_cfg.get('name_or_path') or model_cfg.name}: "
                               f"{first_line(exc, type(exc).__name__)}") from None


@contextmanager
def zero3_init_dtype(dtype: torch.dtype):
    """Models built inside come out of transformers' deepspeed.zero.Init partitioned in `dtype`.

    transformers passes zero.Init only the DeepSpeed config, whose `bf16` section then decides the parameters'
    dtype: float32 once training_arguments has switched DeepSpeed's bf16 mode off for autocast, which would
    hold a 7B base in float32. zero.Init's own `dtype` argument overrides the config; DeepSpeed's ZeRO-3 with
    torch_autocast takes a frozen bf16 base next to the float32 adapter (parameters are gathered per dtype)."""
    import deepspeed

    init = deepspeed.zero.Init
    deepspeed.zero.Init = functools.partial(init, dtype=dtype)
    try:
        yield
    finally:
        deepspeed.zero.Init = init


def copy_into_zero3(model, state_dict: dict, is_main: bool) -> None:
    """Overwrite a ZeRO-3 partitioned model with full tensors held by rank 0, one module at a time."""
    import deepspeed

    for name, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
            if is_main:
                for pname, p in params:
                    p.data.copy_(state_dict[f"{name}.{pname}" if name else pname])


def heldout_nll(model, tokenizer, cfg: DictConfig) -> dict:
    """Teacher-forced NLL (nats/token) of the trained model on `data.heldout_size` training records the run never
    saw (abba.data.sources.load_heldout_records): the metric hyperparameter sweeps choose by, so no test set is
    ever used for a choice. Every rank computes it (ZeRO-3 gathers weights collectively)."""
    from eval.nll import score, summary

    from .data.sources import load_heldout_records

    records = [dict(r) for r in load_heldout_records(cfg.data)]
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for batch in score(model, tokenizer, records, batch_size=int(cfg.trainer.per_device_train_batch_size) * 2,
                       max_length=int(cfg.data.max_length), desc="held-out"):
        results.extend(result for _, result in batch)
    model.train(was_training)
    return summary(results)
