"""Fine-tune a causal LM with ABBA, a peft baseline or full fine-tuning, configured by Hydra (configs/train.yaml).

    python -m abba.train experiment=smoke_arithmetic                       # tiny random Llama, CPU, ~30 s
    python -m abba.train experiment=t1_llama3_2_1b_abba_r32 seed=1         # one GPU
    torchrun --nproc_per_node 4 -m abba.train experiment=t2_mistral_7b_abba_r32 trainer=zero2
    python -m abba.train -m experiment=smoke_arithmetic peft.lr=1e-4,1e-3  # local sweep
    python -m abba.train -m hydra/launcher=slurm experiment=t1_llama3_2_1b_abba_r32 seed=0,1,2
    python -m abba.train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8 \
        experiment=t2_mistral_7b_abba_r32 trainer=zero2                   # one SLURM job on 8 GPUs (abba.launch)

Writes the run folder RUN (see abba.layout): config.yaml, run_info.json, metrics.jsonl, checkpoint-*/ and
final/ (adapter or full model + tokenizer + abba_model.yaml). `train(cfg)` returns the final training loss
(mean of the last 10 logged steps), so a Hydra sweeper can minimise it.
"""

from __future__ import annotations

import dataclasses

import logging
import os
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .methods import METHODS, apply_method, is_abba, parameter_counts
from .data import DataError, build_train_dataset, check_data_source
from .gguf_source import ModelSourceError
from .launch import accumulation_error, export_submitit_env
from .layout import REPO_ROOT
from .base_model import build_model, check_model_source, load_tokenizer, torch_dtype
from .official_code import apply_official_code
from .layout import RunFolderError, check_run_folder, clear_run_folder, default_run_dir, has_checkpoint, is_finished, removed_on_failure
from .provenance import run_info
from .files import write_text, write_json

log = logging.getLogger("abba.train")
NOT_TRAINING_ARGS = ("name", "deepspeed", "keep_global_batch", "bf16", "warmup_ratio", "activation_checkpointing")
FINAL_LOSS_WINDOW = 10


class TrainConfigError(ValueError):
    """An inconsistent training configuration; the message is one line."""


def _validate(cfg: DictConfig) -> None:
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
    # Build the method's config object now: its validation (ABBAConfig.__post_init__, peft's configs) refuses a
    # bad value (peft.r1=abc) before anything is written or loaded, not after the model is built.
    from .methods import abba_config, peft_config

    try:
        if cfg.peft.method == "abba":
            abba_config(cfg.peft, seed=int(cfg.seed))
        elif cfg.peft.method != "full":
            peft_config(cfg.peft)
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainConfigError(f"peft: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
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


def _read_keys(method: str) -> set[str]:
    """The `peft` keys a method's config file has (what the code reads for it)."""
    path = REPO_ROOT / "configs" / "peft" / f"{method}.yaml"
    return set(OmegaConf.load(path)) | {"method", "lr", "weight_decay"} if path.is_file() else set()


def _on_gpu() -> bool:
    return torch.cuda.is_available()


def _float32_adapter_under_deepspeed(cfg: DictConfig) -> bool:
    """DeepSpeed (ZeRO stage 0-3) training only float32 adapter tensors: ABBA with adapter_dtype float32, or a peft
    adapter (peft keeps its adapter weights float32 on a bf16 base). Full fine-tuning keeps DeepSpeed's bf16 mode,
    whose float32 master weights it needs."""
    if not OmegaConf.select(cfg, "trainer.deepspeed") or cfg.peft.method == "full":
        return False
    return cfg.peft.method != "abba" or cfg.peft.get("adapter_dtype", "float32") == "float32"


def _bf16(cfg: DictConfig) -> bool:
    bf16 = cfg.trainer.bf16
    return _on_gpu() if bf16 == "auto" else bool(bf16)


def _autocast_instead_of_deepspeed_bf16(cfg: DictConfig) -> bool:
    """bf16 requested under DeepSpeed for a float32 adapter: training_arguments swaps DeepSpeed's bf16 mode for its
    torch_autocast, and under ZeRO-3 the base is then built in model.dtype explicitly (_zero3_init_dtype)."""
    return _bf16(cfg) and _float32_adapter_under_deepspeed(cfg)


def training_arguments(cfg: DictConfig, run_dir: Path):
    """TrainingArguments from the `trainer` group. Creating them initialises torch.distributed and, for ZeRO-3,
    registers the DeepSpeed config, so this must happen before the model is built."""
    if not _on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on a CPU-only machine
    from transformers import TrainingArguments

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs = {k: v for k, v in trainer_cfg.items() if k not in NOT_TRAINING_ARGS}
    kwargs["bf16"] = _bf16(cfg)
    deepspeed_cfg = trainer_cfg.get("deepspeed")
    if deepspeed_cfg and _autocast_instead_of_deepspeed_bf16(cfg):
        # DeepSpeed's bf16 mode casts every parameter, the float32 adapter included, to bf16 and accumulates its
        # gradients in bf16. Keep the adapter (and its gradients, reductions and optimizer state) float32 instead
        # and get the bf16 compute from torch autocast, as a single process does (issue 14). ZeRO-3 builds the
        # base after this (transformers' zero.Init reads this config): _build_and_train keeps it in model.dtype.
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
    if trainer_cfg.get("keep_global_batch") and world_size > 1:  # _validate refused a world size not dividing it
        kwargs["gradient_accumulation_steps"] //= world_size
    if cfg.logger.name == "wandb":
        os.environ.setdefault("WANDB_PROJECT", str(cfg.logger.project))
        os.environ["WANDB_MODE"] = str(cfg.logger.mode)  # the config is explicit: it beats the environment
        if cfg.logger.entity:
            os.environ.setdefault("WANDB_ENTITY", str(cfg.logger.entity))
        if cfg.logger.group:
            os.environ.setdefault("WANDB_RUN_GROUP", str(cfg.logger.group))
    return TrainingArguments(
        output_dir=str(run_dir), seed=int(cfg.seed), data_seed=int(cfg.seed), deepspeed=deepspeed_cfg,
        remove_unused_columns=False,  # ABBAModel.forward takes **kwargs: the Trainer cannot see its arguments
        include_num_input_tokens_seen="non_padding", report_to=["wandb"] if cfg.logger.name == "wandb" else [],
        run_name=f"{cfg.experiment_name}/seed{cfg.seed}", ddp_backend="gloo" if not _on_gpu() and world_size > 1 else None,
        use_cpu=not _on_gpu(), save_only_model=False, **kwargs,
    )


def _final_loss(losses: list[float]) -> float:
    tail = losses[-FINAL_LOSS_WINDOW:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def _save_final(trainer, model, cfg: DictConfig, run_dir: Path, is_main: bool) -> Path:
    """RUN/final: adapter (or full model) + tokenizer + abba_model.yaml, written to final.tmp then renamed."""
    tmp, final = run_dir / "final.tmp", run_dir / "final"
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    if cfg.peft.method == "pissa" and is_main:
        # PiSSA trained on a residual base; saving relative to its initial adapter turns it into a plain LoRA
        # (rank 2r) on the original W0, which is what merge and evaluation load (peft's documented conversion).
        model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(run_dir / "pissa_init"))
        trainer.processing_class.save_pretrained(str(tmp))
    elif cfg.peft.method != "pissa":
        trainer.save_model(str(tmp))  # every rank: ZeRO-3 gathers collectively
    if is_main:
        OmegaConf.save(cfg.model, tmp / "abba_model.yaml", resolve=True)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()
    return final


def _heldout_nll(model, tokenizer, cfg: DictConfig) -> dict:
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


def _save_pissa_init(model, directory: Path) -> None:
    """The PiSSA adapter as initialised, saved as a plain LoRA init (peft's recipe for the final conversion)."""
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    model.save_pretrained(str(directory))
    config.init_lora_weights = init


def _zero3(cfg: DictConfig) -> bool:
    ds = cfg.trainer.deepspeed
    return ds is not None and int(ds.get("zero_optimization", {}).get("stage", 0)) == 3


@contextmanager
def _zero3_init_dtype(dtype: torch.dtype):
    """Models built inside come out of transformers' deepspeed.zero.Init partitioned in `dtype`.

    transformers passes zero.Init only the DeepSpeed config, whose `bf16` section then decides the parameters'
    dtype: float32 once training_arguments has switched DeepSpeed's bf16 mode off for autocast, which would
    hold a 7B base in float32. zero.Init's own `dtype` argument overrides the config; DeepSpeed's ZeRO-3 with
    torch_autocast takes a frozen bf16 base next to the float32 adapter (parameters are gathered per dtype)."""
    import deepspeed
    import functools

    init = deepspeed.zero.Init
    deepspeed.zero.Init = functools.partial(init, dtype=dtype)
    try:
        yield
    finally:
        deepspeed.zero.Init = init


def _copy_into_zero3(model, state_dict: dict, is_main: bool) -> None:
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


def train(cfg: DictConfig) -> float:
    """Run one fine-tuning job described by a composed `configs/train.yaml`; return the final training loss."""
    return fit(cfg)[0]


def fit(cfg: DictConfig):
    """`train`, also returning the trained in-memory model (None when a finished run is resumed)."""
    if cfg.official_code:
        apply_official_code(cfg)
    _validate(cfg)
    run_dir = Path(cfg.output_dir or default_run_dir(cfg.paths.output_root, cfg.experiment_name, cfg.seed))
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    # Everything that can be refused is checked before anything is written or loaded.
    check_run_folder(run_dir, cfg.resume, cfg.overwrite)
    had_content = run_dir.is_dir() and any(run_dir.iterdir())
    if cfg.resume and is_finished(run_dir):
        import json

        info = json.loads((run_dir / "run_info.json").read_text())
        log.warning("%s is already finished; nothing to resume", run_dir)
        return float(info.get("final_loss", float("nan"))), None
    check_data_source(cfg.data)
    if cfg.data.get("heldout_size"):
        from .data.sources import load_heldout_records

        load_heldout_records(cfg.data)  # refuses a held-out slice that would overlap the training subset
    check_model_source(cfg.model)

    # Random weights drawn under deepspeed.zero.Init differ from a single process's draw; keep runs comparable
    # across world sizes by drawing them the single-process way first (random_init is for tests/benchmarks).
    single_process_weights = None
    if cfg.model.random_init and _zero3(cfg):
        single_process_weights = build_model(cfg.model, dtype=torch_dtype(cfg.model.dtype), seed=int(cfg.seed)).state_dict()
    try:
        args = training_arguments(cfg, run_dir)
    except (TypeError, ValueError) as exc:  # a trainer.* value or name TrainingArguments refuses
        raise TrainConfigError(f"trainer: {next(iter(str(exc).splitlines()), type(exc).__name__)}") from None
    if args.deepspeed and args.world_size > 1:
        import deepspeed

        # Wrap the process group torch already has, so deepspeed.zero.Init (ZeRO-3 model creation) sees it.
        deepspeed.init_distributed(dist_backend="gloo" if not _on_gpu() else "nccl")
    is_main = args.process_index == 0
    # A new run that fails before its first checkpoint (a model that cannot be loaded, Ctrl-C while tokenizing)
    # takes the folder it created with it, so the same command can simply be run again.
    with removed_on_failure(run_dir, keep=lambda: has_checkpoint(run_dir)) if is_main and not had_content \
            else nullcontext():
        return _build_and_train(cfg, args, run_dir, is_main, had_content, single_process_weights)


def _load(what: str, model_cfg, load):
    """`load()`, with a failure to find or fetch the files turned into one ModelSourceError line."""
    try:
        return load()
    except (OSError, ValueError) as exc:  # missing/unreachable files (OSError), unreadable config.json (ValueError)
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelSourceError(f"cannot load the {what} of model {model_cfg.get('name_or_path') or model_cfg.name}: "
                               f"{first}") from None


def _build_and_train(cfg: DictConfig, args, run_dir: Path, is_main: bool, had_content: bool,
                     single_process_weights):
    with args.main_process_first(local=False, desc="run folder"):
        if is_main:
            if cfg.overwrite:
                clear_run_folder(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    tokenizer = _load("tokenizer", cfg.model, lambda: load_tokenizer(cfg.model))
    dtype = torch_dtype(cfg.model.dtype)
    with _zero3_init_dtype(dtype) if _zero3(cfg) and _autocast_instead_of_deepspeed_bf16(cfg) else nullcontext():
        # ZeRO-3: built partitioned
        base = _load("weights", cfg.model, lambda: build_model(cfg.model, dtype=dtype, seed=int(cfg.seed)))
    if single_process_weights is not None:
        _copy_into_zero3(base, single_process_weights, is_main)
        del single_process_weights
    if cfg.trainer.activation_checkpointing and cfg.peft.method != "full":
        base.enable_input_require_grads()  # a frozen embedding would cut the checkpointed graph
    try:
        model = apply_method(base, cfg.peft, seed=int(cfg.seed))
    except ValueError as exc:  # e.g. target_modules that match no layer of this model
        raise TrainConfigError(f"peft: {next(iter(str(exc).splitlines()), 'cannot attach the adapter')}") from None
    # Tokenized after the adapter is attached, so that a refusal there (target_modules) comes before any work.
    with args.main_process_first(local=False, desc="tokenizing"):
        dataset, n_truncated = build_train_dataset(cfg.data, tokenizer)
    if cfg.dump_init_adapter and is_abba(model) and is_main:
        model.save_pretrained(run_dir / "init_adapter")  # before DeepSpeed wraps (and partitions) the adapter
    if cfg.peft.method == "pissa" and is_main:
        _save_pissa_init(model, run_dir / "pissa_init")
    trainable, total = parameter_counts(model)
    info = run_info(cfg.experiment_name, int(cfg.seed), cfg.peft.method, args.world_size, trainable, total,
                    table=cfg.table, n_train_examples=len(dataset), n_truncated=n_truncated, finished=False)
    if is_main:
        write_json(run_dir / "run_info.json", info)
        log.warning("%s -> %s: %s trainable of %s parameters, %d examples (%d truncated), world size %d",
                    cfg.experiment_name, run_dir, f"{trainable:,}", f"{total:,}", len(dataset), n_truncated,
                    args.world_size)

    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_utils import get_last_checkpoint

    from .trainer import AdapterTrainer, InterruptCallback, MetricsCallback, WandbRunCallback

    metrics = MetricsCallback(run_dir / "metrics.jsonl")
    callbacks = [metrics]
    if cfg.interrupt_at_step is not None:
        callbacks.append(InterruptCallback(cfg.interrupt_at_step))
    if cfg.logger.name == "wandb":
        os.environ.setdefault("WANDB_DIR", str(run_dir))  # offline runs land in RUN/wandb, not the working dir
        callbacks.append(WandbRunCallback(OmegaConf.to_container(cfg, resolve=True),
                                          {"trainable_params": trainable, "total_params": total}))
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        lorapro={"moment_dtype": cfg.peft.get("moment_dtype", "float32")} if cfg.peft.method == "lorapro" else None,
    )
    checkpoint = get_last_checkpoint(str(run_dir)) if cfg.resume and run_dir.is_dir() else None
    if cfg.resume and checkpoint is None and had_content:  # a new folder with resume=true is just a first run
        log.warning("resume=true but %s has no checkpoint: starting from scratch", run_dir)
    elif checkpoint is not None:
        log.warning("resuming %s from %s", run_dir, Path(checkpoint).name)
    trainer.train(resume_from_checkpoint=checkpoint)

    heldout = _heldout_nll(model, tokenizer, cfg) if cfg.data.get("heldout_size") else {}
    if heldout and is_main:
        write_json(run_dir / "heldout_nll.json", heldout)
        log.warning("%s: held-out NLL %.4f nats/token over %d training records it never saw",
                    cfg.experiment_name, heldout["nll"], heldout["nll_items"])
    _save_final(trainer, model, cfg, run_dir, is_main)
    loss = _final_loss(metrics.losses)
    if is_main:
        write_json(run_dir / "run_info.json", {**info, "finished": True, "final_loss": loss,
                                               "global_step": trainer.state.global_step,
                                               **({"heldout_nll": heldout["nll"]} if heldout else {})})
    return loss, model


def _interrupted(cfg: DictConfig) -> str:
    run_dir = Path(cfg.output_dir)
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if run_dir.is_dir() else []
    if checkpoints:
        return f"interrupted: {run_dir} keeps {checkpoints[-1].name}; run the same command with resume=true to continue"
    return "interrupted before the first checkpoint: nothing was kept; run the same command again to start over"


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
        loss = train(cfg)
    except (TrainConfigError, RunFolderError, DataError, ModelSourceError) as exc:
        if not multirun:
            fail(str(exc), USAGE if isinstance(exc, TrainConfigError) else REFUSED)
        # In a sweep one job's refusal must not stop the others: say it in one line, let Hydra go on.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sweep.record("refused", str(exc))
        return float("nan")
    except KeyboardInterrupt:
        fail(_interrupted(cfg), INTERRUPTED)
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
