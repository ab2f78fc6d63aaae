"""The transformers Trainer, taught to checkpoint an ABBA adapter, plus the run's metric and test callbacks.

* `AdapterTrainer` saves only the adapter for an `abba.ABBAModel`, through `ABBAModel.save_pretrained` (which
  gathers ZeRO-3 partitioned factors; adapter_config.json + adapter_model.safetensors; optimizer/scheduler/RNG
  state come from the Trainer as usual) and restores it on `resume_from_checkpoint` through
  `ABBAModel.load_adapter`; under DeepSpeed its checkpoints leave the frozen base out, as they do for peft.
  peft baselines and full fine-tuning use the Trainer's own save/load.
* `MetricsCallback` appends loss, lr, grad_norm and tokens/s per optimizer step to RUN/metrics.jsonl (a torn
  last line, from a crash while it was written, is dropped on resume).
* `InterruptCallback` raises after a chosen checkpoint is written, to test resume=true (+debug.interrupt_at_step).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .model import ABBAModel
from .files import append_jsonl, read_jsonl, write_jsonl, write_text

TRAINING_ARGS_NAME = "training_args.bin"


@contextmanager
def _abba_counts_as_peft():
    """Let transformers treat an ABBAModel as it treats a peft model where DeepSpeed checkpoints are concerned.

    The Trainer asks `_is_peft_model` whether a DeepSpeed checkpoint may leave the frozen parameters out
    (`save_checkpoint(exclude_frozen_parameters=True)`), whether resuming may load it non-strictly, and whether
    the final ZeRO-3 save may gather the trainable parameters only. Without this each checkpoint of a
    Mistral-7B run would carry the whole 14 GB base model. (DeepSpeed drops frozen parameters by name, so a
    tied output embedding, as in Llama-3.2 and Gemma-2, is still saved once.) ABBAModel has `get_base_model()`, the one other
    thing the Trainer's peft branches use during training.
    """
    import transformers.trainer as hf_trainer

    original = hf_trainer._is_peft_model
    hf_trainer._is_peft_model = lambda model: isinstance(model, ABBAModel) or original(model)
    try:
        yield
    finally:
        hf_trainer._is_peft_model = original


class AdapterTrainer(Trainer):
    """Trainer whose checkpoints of an ABBAModel hold the adapter only.

    `lorapro={"moment_dtype": ...}` (peft=lorapro) swaps the optimizer for abba.lorapro.LoraProAdamW, with the
    TrainingArguments' lr, betas, eps and weight decay; scheduler, clipping and checkpoints stay the Trainer's."""

    def __init__(self, *args, lorapro: dict | None = None, **kwargs):
        self.lorapro = lorapro
        super().__init__(*args, **kwargs)

    # ---- LoRA-Pro optimizer hook (peft=lorapro); nothing else in this class depends on it ----
    def create_optimizer(self, model=None):
        if self.lorapro is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from .lorapro import build_optimizer

        args = self.args
        self.optimizer = build_optimizer(self.model if model is None else model, lr=args.learning_rate,
                                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                         weight_decay=args.weight_decay, **self.lorapro)
        return self.optimizer

    def train(self, *args, **kwargs):
        with _abba_counts_as_peft():
            return super().train(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not isinstance(self.model, ABBAModel):
            with _abba_counts_as_peft():
                return super().save_model(output_dir, _internal_call)
        # One save path for every setting: ABBAModel.save_pretrained gathers ZeRO-3 partitioned factors itself
        # (collectively, so every rank calls it; the Trainer calls save_model on every rank) and one rank writes.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.model.save_pretrained(output_dir, is_main_process=self.args.should_save)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        if not isinstance(model, ABBAModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model.load_adapter(resume_from_checkpoint)  # ABBAModel's one load path (gathers under ZeRO-3)


class MetricsCallback(TrainerCallback):
    """Per-step metrics to `path` (JSON lines, rank 0). On resume, records after the checkpoint are dropped so
    the file holds each step once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.losses: list[float] = []
        self._last_time = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [record for record in _complete_records(self.path) if record["step"] <= state.global_step]
        self.losses = [record["loss"] for record in kept]
        write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        elapsed = max(now - self._last_time, 1e-9)
        record = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"],
                  "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens_per_s": (tokens - self._last_tokens) / elapsed, "tokens_seen": tokens}
        self._last_time, self._last_tokens = now, tokens
        self.losses.append(float(logs["loss"]))
        with self.path.open("a") as f:
            append_jsonl(f, [record])


def _complete_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A crash while a record was appended leaves a last line without its newline
    that may not parse: that line is dropped (its step is trained again). A bad line anywhere else raises
    json.JSONDecodeError: the file is damaged, not torn."""
    try:
        return read_jsonl(path)
    except json.JSONDecodeError:
        text = path.read_text()
        if text.endswith("\n"):
            raise
        write_text(path, text[:text.rfind("\n") + 1])
        return read_jsonl(path)


class InterruptCallback(TrainerCallback):
    """Raise once the checkpoint of step `step` is on disk: a reproducible stand-in for a killed job."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"debug.interrupt_at_step={self.step}: stopping after checkpoint-{state.global_step}")


class WandbRunCallback(TrainerCallback):
    """logger=wandb: add the resolved Hydra config and the parameter counts to the wandb run (the Trainer's own
    WandbCallback logs the per-step metrics). Runs after WandbCallback has started the run."""

    def __init__(self, config: dict, counts: dict):
        self.config, self.counts = config, counts

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            import wandb

            if wandb.run is not None:
                wandb.run.config.update({"abba": self.config}, allow_val_change=True)
                wandb.run.summary.update(self.counts)
