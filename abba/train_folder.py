"""What abba.train writes into its run folder RUN (layout: abba.layout), apart from the Trainer's checkpoint-*/
and metrics.jsonl: where RUN is and whether it may be used (refuse, clear, resume), config.yaml, run_info.json,
the initial adapters (pissa_init/, init_adapter/ for +debug.dump_init_adapter), heldout_nll.json, and final/.

final/ is written here only, atomically (abba.files.atomic_path): the adapter (or full model) as the Trainer or
peft saves it, the tokenizer, and abba_model.yaml, the base model entry (configs/model keys) plus the run's
`seed`, which is everything abba.merge needs to rebuild the base without reading RUN/config.yaml.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .files import atomic_path, write_json, write_text
from .layout import (CONFIG_FILE, FINAL_DIR, MODEL_ENTRY_FILE, RUN_INFO_FILE, check_run_folder, clear_run_folder,
                     default_run_dir)
from .methods import is_abba
from .train_config import debug_switch

log = logging.getLogger("abba.train")
FINAL_LOSS_WINDOW = 10


def open_run_folder(cfg: DictConfig) -> tuple[Path, bool]:
    """(RUN, whether it already held files). Sets cfg.output_dir to RUN (default: abba.layout.default_run_dir).
    Raises RunFolderError when RUN may not be used as asked (before anything is written)."""
    run_dir = Path(cfg.output_dir or default_run_dir(cfg.paths.output_root, cfg.experiment_name, cfg.seed))
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    check_run_folder(run_dir, cfg.resume, cfg.overwrite)
    return run_dir, run_dir.is_dir() and any(run_dir.iterdir())


def finished_loss(run_dir: Path) -> float:
    """The final loss a finished RUN recorded in run_info.json (NaN when it has none)."""
    info = json.loads((run_dir / RUN_INFO_FILE).read_text())
    return float(info.get("final_loss", float("nan")))


def write_config(cfg: DictConfig, run_dir: Path, args, is_main: bool) -> None:
    """RUN/config.yaml, the resolved config (after clearing RUN for overwrite=true); the other ranks wait."""
    with args.main_process_first(local=False, desc="run folder"):
        if is_main:
            if cfg.overwrite:
                clear_run_folder(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def save_initial_adapters(model, cfg: DictConfig, run_dir: Path, is_main: bool) -> None:
    """Before DeepSpeed wraps (and partitions) the adapter: RUN/pissa_init/ for peft=pissa (its final conversion
    needs it) and, for +debug.dump_init_adapter=true, the ABBA adapter as initialised in RUN/init_adapter/."""
    if not is_main:
        return
    if debug_switch(cfg, "dump_init_adapter", False) and is_abba(model):
        model.save_pretrained(run_dir / "init_adapter")
    if cfg.peft.method == "pissa":
        # The PiSSA adapter as initialised, saved as a plain LoRA init (peft's recipe for the final conversion).
        config = model.peft_config["default"]
        init, config.init_lora_weights = config.init_lora_weights, True
        model.save_pretrained(str(run_dir / "pissa_init"))
        config.init_lora_weights = init


def write_run_info(run_dir: Path, info: dict, is_main: bool) -> None:
    """RUN/run_info.json (abba.provenance.run_info, plus the outcome once finished), from rank 0."""
    if is_main:
        write_json(run_dir / RUN_INFO_FILE, info)


def write_heldout_nll(run_dir: Path, heldout: dict, is_main: bool) -> None:
    """RUN/heldout_nll.json (abba.train_model.heldout_nll's summary), from rank 0."""
    if is_main:
        write_json(run_dir / "heldout_nll.json", heldout)


def save_final(trainer, model, cfg: DictConfig, run_dir: Path, is_main: bool) -> Path:
    """RUN/final: the adapter (or full model) + tokenizer + abba_model.yaml, all or nothing.

    Rank 0 writes into a temporary folder that replaces final/ once everything is in it (abba.files.atomic_path);
    a save that gathers ZeRO-3 partitioned weights is collective, so every rank calls this, and every rank that
    writes (DeepSpeed's own checkpoint when 16-bit gathering is off) writes into rank 0's temporary folder."""
    final = run_dir / FINAL_DIR
    with atomic_path(final, folder=True) if is_main else nullcontext(None) as tmp:
        tmp = _shared_path(tmp)
        if cfg.peft.method == "pissa":
            if is_main:
                # PiSSA trained on a residual base; saving relative to its initial adapter turns it into a plain
                # LoRA (rank 2r) on the original W0, which merge and evaluation load (peft's documented conversion).
                model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(run_dir / "pissa_init"))
                trainer.processing_class.save_pretrained(str(tmp))
        else:
            trainer.save_model(str(tmp))  # every rank: ZeRO-3 gathers collectively
        if is_main:
            entry = OmegaConf.to_container(cfg.model, resolve=True)
            OmegaConf.save(OmegaConf.create({**entry, "seed": int(cfg.seed)}), tmp / MODEL_ENTRY_FILE)
        trainer.accelerator.wait_for_everyone()  # every rank has written before rank 0 renames
    trainer.accelerator.wait_for_everyone()  # and no rank goes on before final/ is there
    return final


def _shared_path(tmp: Path | None) -> Path:
    """Rank 0's temporary path, on every rank (a no-op in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tmp
    holder = [str(tmp) if tmp is not None else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def final_loss(losses: list[float]) -> float:
    """The run's final training loss: the mean of the last FINAL_LOSS_WINDOW logged losses (NaN for none)."""
    tail = losses[-FINAL_LOSS_WINDOW:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def interrupted_message(run_dir: Path) -> str:
    """What Ctrl-C left in RUN and how to go on (one line)."""
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if run_dir.is_dir() else []
    if checkpoints:
        return f"interrupted: {run_dir} keeps {checkpoints[-1].name}; run the same command with resume=true to continue"
    return "interrupted before the first checkpoint: nothing was kept; run the same command again to start over"
