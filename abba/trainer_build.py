"""The Trainer a training run uses: TrainingArguments from the `trainer` group (precision, DeepSpeed, the global
batch over the processes), the logger set-up (`logger` group: wandb's environment), the run's callbacks
(metrics, wandb, the test switch +debug.interrupt_at_step) and the abba.trainer.AdapterTrainer around them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .train_config import TrainConfigError, autocast_instead_of_deepspeed_bf16, bf16, debug_switch, on_gpu

log = logging.getLogger("abba.train")
#: Keys of the `trainer` group that are not TrainingArguments fields (this module reads them itself).
NOT_TRAINING_ARGS = ("name", "deepspeed", "keep_global_batch", "bf16", "warmup_ratio", "activation_checkpointing")


def training_arguments(cfg: DictConfig, run_dir: Path):
    """TrainingArguments from the `trainer` group. Creating them initialises torch.distributed and, for ZeRO-3,
    registers the DeepSpeed config, so this must happen before the model is built. Raises TrainConfigError for a
    trainer.* value or name TrainingArguments refuses."""
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on a CPU-only machine
    from transformers import TrainingArguments

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs = {k: v for k, v in trainer_cfg.items() if k not in NOT_TRAINING_ARGS}
    kwargs["bf16"] = bf16(cfg)
    deepspeed_cfg = trainer_cfg.get("deepspeed")
    if deepspeed_cfg and autocast_instead_of_deepspeed_bf16(cfg):
        # DeepSpeed's bf16 mode casts every parameter, the float32 adapter included, to bf16 and accumulates its
        # gradients in bf16. Keep the adapter (and its gradients, reductions and optimizer state) float32 instead
        # and get the bf16 compute from torch autocast, as a single process does (issue 14). ZeRO-3 builds the
        # base after this (transformers' zero.Init reads this config): abba.train_model keeps it in model.dtype.
        deepspeed_cfg = {**deepspeed_cfg, "bf16": {"enabled": False},
                         # no module's gradients are reduced in bf16 (the default would pick every nn.Linear)
                         "torch_autocast": {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}}
        kwargs["bf16"] = False  # the Trainer's own bf16 would be DeepSpeed's bf16 mode again
    kwargs["warmup_steps"] = float(trainer_cfg["warmup_ratio"])  # transformers 5: a float < 1 is a ratio
    # transformers 5.21 renamed the field gradient_checkpointing -> activation_checkpointing; the config uses the
    # new name and this passes it under the name the installed version has (the locked 5.17.0: the old one).
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    kwargs[checkpointing] = bool(trainer_cfg.get("activation_checkpointing", False))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer_cfg.get("keep_global_batch") and world_size > 1:  # validate refused a world size not dividing it
        kwargs["gradient_accumulation_steps"] //= world_size
    try:
        args = TrainingArguments(
            output_dir=str(run_dir), seed=int(cfg.seed), data_seed=int(cfg.seed), deepspeed=deepspeed_cfg,
            remove_unused_columns=False,  # ABBAModel.forward takes **kwargs: the Trainer cannot see its arguments
            include_num_input_tokens_seen="non_padding", report_to=["wandb"] if cfg.logger.name == "wandb" else [],
            run_name=f"{cfg.experiment_name}/seed{cfg.seed}",
            ddp_backend="gloo" if not on_gpu() and world_size > 1 else None,
            use_cpu=not on_gpu(), save_only_model=False, **kwargs,
        )
    except (TypeError, ValueError) as exc:  # a trainer.* value or name TrainingArguments refuses
        raise TrainConfigError(f"trainer: {next(iter(str(exc).splitlines()), type(exc).__name__)}") from None
    if args.deepspeed and args.world_size > 1:
        import deepspeed

        # Wrap the process group torch already has, so deepspeed.zero.Init (ZeRO-3 model creation) sees it.
        deepspeed.init_distributed(dist_backend="gloo" if not on_gpu() else "nccl")
    return args


def set_up_wandb(cfg: DictConfig, run_dir: Path) -> None:
    """logger=wandb: wandb's environment from the `logger` group (read when the Trainer's WandbCallback starts the
    run); nothing for logger=none."""
    if cfg.logger.name != "wandb":
        return
    os.environ.setdefault("WANDB_PROJECT", str(cfg.logger.project))
    os.environ["WANDB_MODE"] = str(cfg.logger.mode)  # the config is explicit: it beats the environment
    if cfg.logger.entity:
        os.environ.setdefault("WANDB_ENTITY", str(cfg.logger.entity))
    if cfg.logger.group:
        os.environ.setdefault("WANDB_RUN_GROUP", str(cfg.logger.group))
    os.environ.setdefault("WANDB_DIR", str(run_dir))  # offline runs land in RUN/wandb, not the working dir


def build_trainer(cfg: DictConfig, args, run_dir: Path, model, tokenizer, dataset, counts: tuple[int, int]):
    """(AdapterTrainer, its MetricsCallback) for `model` on the tokenized `dataset`; `counts` = (trainable, total)
    parameters, added to the wandb run. Per-step metrics go to RUN/metrics.jsonl."""
    from transformers import DataCollatorForSeq2Seq

    from .trainer import AdapterTrainer, InterruptCallback, MetricsCallback, WandbRunCallback

    metrics = MetricsCallback(run_dir / "metrics.jsonl")
    callbacks = [metrics]
    interrupt_at_step = debug_switch(cfg, "interrupt_at_step")
    if interrupt_at_step is not None:
        callbacks.append(InterruptCallback(interrupt_at_step))
    set_up_wandb(cfg, run_dir)
    if cfg.logger.name == "wandb":
        callbacks.append(WandbRunCallback(OmegaConf.to_container(cfg, resolve=True),
                                          {"trainable_params": counts[0], "total_params": counts[1]}))
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        lorapro={"moment_dtype": cfg.peft.get("moment_dtype", "float32")} if cfg.peft.method == "lorapro" else None,
    )
    return trainer, metrics


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path, had_content: bool) -> str | None:
    """RUN's newest checkpoint-* when resume=true (None: start from scratch), said in the log either way."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(run_dir)) if cfg.resume and run_dir.is_dir() else None
    if cfg.resume and checkpoint is None and had_content:  # a new folder with resume=true is just a first run
        log.warning("resume=true but %s has no checkpoint: starting from scratch", run_dir)
    elif checkpoint is not None:
        log.warning("resuming %s from %s", run_dir, Path(checkpoint).name)
    return checkpoint
