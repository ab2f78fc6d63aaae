"""Fine-tune a causal LM with ABBA, a peft baseline or full fine-tuning, configured by Hydra (configs/train.yaml).

    python -m abba.train experiment=smoke_arithmetic                       # tiny random Llama, CPU, ~30 s
    python -m abba.train experiment=t1_llama3_2_1b_abba_r32 seed=1         # one GPU
    torchrun --nproc_per_node 4 -m abba.train experiment=t2_mistral_7b_abba_r32 trainer=zero2
    python -m abba.train -m experiment=smoke_arithmetic peft.lr=1e-4,1e-3  # local sweep
    python -m abba.train -m hydra/launcher=slurm experiment=t1_llama3_2_1b_abba_r32 seed=0,1,2
    python -m abba.train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8 \
        experiment=t2_mistral_7b_abba_r32 trainer=zero2                   # one SLURM job on 8 GPUs (abba.launch)

Writes the run folder RUN (see abba.layout): config.yaml, run_info.json, metrics.jsonl, checkpoint-*/ and
final/ (adapter or full model + tokenizer + abba_model.yaml). `train(cfg)` goes through the steps in order: check
the config (abba.train_config), open RUN (abba.train_folder), create the TrainingArguments (abba.trainer_build),
build the model (abba.train_model), build the Trainer and train, write final/ (abba.train_folder). It returns the
final training loss (mean of the last 10 logged steps), which `main` hands to Hydra so a sweeper can minimise it.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from .base_model import check_model_source
from .data import DataError, build_train_dataset, check_data_source
from .gguf_source import ModelSourceError
from .launch import export_submitit_env
from .layout import REPO_ROOT, RunFolderError, default_run_dir, has_checkpoint, is_finished, removed_on_failure
from .model import parameter_counts
from .official_code import apply_official_code
from .provenance import run_info
from .train_config import TrainConfigError, validate
from .train_folder import (final_loss, finished_loss, interrupted_message, open_run_folder, save_final,
                           save_initial_adapters, write_config, write_heldout_nll, write_run_info)
from .train_model import build, heldout_nll, single_process_weights
from .trainer_build import build_trainer, checkpoint_to_resume, training_arguments

log = logging.getLogger("abba.train")


class TrainResult(NamedTuple):
    """What `train` returns: `loss, model = train(cfg)`."""

    loss: float  # the final training loss: mean of the last 10 logged losses (NaN if none was logged)
    model: object  # the trained in-memory model; None when resume=true found the run already finished


def train(cfg: DictConfig) -> TrainResult:
    """Run one fine-tuning job described by a composed `configs/train.yaml`.

    Raises TrainConfigError (a bad value), RunFolderError (RUN may not be used as asked), DataError and
    ModelSourceError (inputs missing or unreachable), all before anything is written or loaded where possible."""
    if cfg.official_code:
        apply_official_code(cfg)
    validate(cfg)
    run_dir, had_content = open_run_folder(cfg)
    if cfg.resume and is_finished(run_dir):
        log.warning("%s is already finished; nothing to resume", run_dir)
        return TrainResult(finished_loss(run_dir), None)
    _check_sources(cfg)  # everything that can be refused is checked before anything is written or loaded
    weights = single_process_weights(cfg)  # before TrainingArguments: afterwards ZeRO-3 would partition it
    args = training_arguments(cfg, run_dir)
    is_main = args.process_index == 0
    # A new run that fails before its first checkpoint (a model that cannot be loaded, Ctrl-C while tokenizing)
    # takes the folder it created with it, so the same command can simply be run again.
    with removed_on_failure(run_dir, keep=lambda: has_checkpoint(run_dir)) if is_main and not had_content \
            else nullcontext():
        write_config(cfg, run_dir, args, is_main)
        model, tokenizer = build(cfg, is_main, weights)
        del weights
        # Tokenized after the adapter is attached, so that a refusal there (target_modules) comes before any work.
        with args.main_process_first(local=False, desc="tokenizing"):
            dataset, n_truncated = build_train_dataset(cfg.data, tokenizer)
        save_initial_adapters(model, cfg, run_dir, is_main)
        trainable, total = parameter_counts(model)
        info = run_info(cfg.experiment_name, int(cfg.seed), cfg.peft.method, args.world_size, trainable, total,
                        table=cfg.table, n_train_examples=len(dataset), n_truncated=n_truncated, finished=False)
        write_run_info(run_dir, info, is_main)
        if is_main:
            log.warning("%s -> %s: %s trainable of %s parameters, %d examples (%d truncated), world size %d",
                        cfg.experiment_name, run_dir, f"{trainable:,}", f"{total:,}", len(dataset), n_truncated,
                        args.world_size)

        trainer, metrics = build_trainer(cfg, args, run_dir, model, tokenizer, dataset, (trainable, total))
        trainer.train(resume_from_checkpoint=checkpoint_to_resume(cfg, run_dir, had_content))

        heldout = heldout_nll(model, tokenizer, cfg) if cfg.data.get("heldout_size") else {}
        if heldout:
            write_heldout_nll(run_dir, heldout, is_main)
            if is_main:
                log.warning("%s: held-out NLL %.4f nats/token over %d training records it never saw",
                            cfg.experiment_name, heldout["nll"], heldout["nll_items"])
        save_final(trainer, model, cfg, run_dir, is_main)
        loss = final_loss(metrics.losses)
        write_run_info(run_dir, {**info, "finished": True, "final_loss": loss, "global_step": trainer.state.global_step,
                                 **({"heldout_nll": heldout["nll"]} if heldout else {})}, is_main)
    return TrainResult(loss, model)


def _check_sources(cfg: DictConfig) -> None:
    """Refuse missing or unreachable data and model files (DataError, ModelSourceError), and a held-out slice
    that would overlap the training subset, before RUN is written."""
    check_data_source(cfg.data)
    if cfg.data.get("heldout_size"):
        from .data.sources import load_heldout_records

        load_heldout_records(cfg.data)
    check_model_source(cfg.model)


@hydra.main(config_path=str(REPO_ROOT / "configs"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: name the run folder from the command line (recorded in config.yaml as `overrides`),
    then `train(cfg)`. Known failures print one line (abba.cli): a bad value exits 2, a refusal or a missing or
    unreachable model or data file exits 1, Ctrl-C exits 130 and says how to resume."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import sweep
    from .cli import INTERRUPTED, REFUSED, USAGE, fail

    export_submitit_env()  # a task of a several-task submitit job becomes a torchrun-style process (abba.launch)
    # As typed: reading the list through OmegaConf would resolve `${paths.data_dir}` inside an override and make
    # the folder name depend on the environment (and differ from abba.mini's and abba.reproduce's).
    task = [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]
    with open_dict(cfg):
        cfg.overrides = [o.replace("${", "\\${") for o in task]  # recorded as typed, not resolved in config.yaml
        if cfg.output_dir is None:
            cfg.output_dir = default_run_dir(cfg.paths.output_root, cfg.experiment_name, cfg.seed, task)
    print(f"abba.train: run folder {cfg.output_dir}", flush=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    finished_before = bool(cfg.resume) and is_finished(Path(cfg.output_dir))
    try:
        loss = train(cfg).loss
    except (TrainConfigError, RunFolderError, DataError, ModelSourceError) as exc:
        if not multirun:
            fail(str(exc), USAGE if isinstance(exc, TrainConfigError) else REFUSED)
        # In a sweep one job's refusal must not stop the others: say it in one line, let Hydra go on.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sweep.record("refused", str(exc))
        return float("nan")
    except KeyboardInterrupt:
        fail(interrupted_message(Path(cfg.output_dir)), INTERRUPTED)
    except Exception as exc:  # a bug: keep its traceback, but in a sweep let the other jobs run
        if not multirun:
            raise
        import traceback

        traceback.print_exc()
        sweep.record("failed", f"{cfg.output_dir}: {type(exc).__name__}: {exc} (traceback above)")
        return float("nan")
    sweep.record("skipped" if finished_before else "trained",
                 f"{cfg.output_dir}" + (" (already finished)" if finished_before else f" (loss {loss:.4g})"))
    return loss


if __name__ == "__main__":
    from .hydra_check import exit_on_bad_command_line

    from .launch import exit_on_bad_launch

    exit_on_bad_command_line(REPO_ROOT / "configs", "train")
    exit_on_bad_launch(REPO_ROOT / "configs", "train")
    main()
