"""One training job on several processes (one per GPU), on one node or several: what is refused before any
process starts, and torch.distributed set up from SLURM's environment for Hydra's submitit launchers.

    python -m abba.train -m hydra/launcher=slurm hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=8 \
        hydra.launcher.gpus_per_node=8 experiment=t2_mistral_7b_abba_r32 trainer=zero2 seed=0,1,2
    python -m abba.train -m hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2 \
        experiment=smoke_arithmetic trainer=zero2 trainer.gradient_accumulation_steps=2      # 2 CPU processes
    NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/train_arithmetic.sh    # torchrun, one call per node
    python -m abba.launch world_size=16 experiment=t2_mistral_7b_abba_r32      # scripts/_launch.sh's check

Under a submitit launcher every task of a job runs the whole Hydra job. `export_submitit_env`, the first thing
abba.train.main does, exports what torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, from
submitit's TorchDistributedEnvironment); from there on a task is a torchrun process: TrainingArguments
initialises torch.distributed from them, DeepSpeed wraps that process group, rank 0 writes the run folder.

Refused in one line (abba.cli) before anything starts:
- hydra/launcher=slurm where `sbatch` is not found (exit 1);
- a submitit launcher without -m: Hydra would ignore it and run one local process (exit 2);
- tasks_per_node != gpus_per_node when GPUs are requested: one process per GPU (exit 2); submitit_local without
  gpus_per_node on a machine with a GPU (submitit would hide the GPUs) (exit 2);
- a world size (nodes x tasks_per_node, or torchrun's) that does not divide trainer.gradient_accumulation_steps
  while trainer.keep_global_batch keeps the paper's global batch (exit 2; abba.train refuses it too).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

from .cli import REFUSED, USAGE, Refusal, UsageError, fail

#: hydra/launcher choices whose jobs run in submitit tasks (configs/hydra/launcher/ and the plugin's own names).
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def accumulation_error(trainer_cfg, world_size: int) -> str | None:
    """Why `world_size` processes cannot keep the configured global batch, or None. With keep_global_batch each
    process accumulates gradient_accumulation_steps / world_size micro-batches (abba.trainer_build)."""
    accumulation = int(trainer_cfg.get("gradient_accumulation_steps") or 1)
    if world_size <= 1 or not trainer_cfg.get("keep_global_batch", True) or accumulation % world_size == 0:
        return None
    return (f"world size {world_size} does not divide trainer.gradient_accumulation_steps={accumulation}, so the "
            f"global batch ({accumulation} x {trainer_cfg.get('per_device_train_batch_size')} sequences) cannot be "
            f"kept: use a number of processes that divides {accumulation}, a multiple of {world_size} as "
            f"trainer.gradient_accumulation_steps, or trainer.keep_global_batch=false for a {world_size}x larger "
            f"global batch")


def _launcher_choice(argv: list[str]) -> str | None:
    choice = None
    for arg in argv:
        if arg.startswith("hydra/launcher="):
            choice = arg.split("=", 1)[1]
    return choice


def _jobs_to_check(argv: list[str]) -> list[list[str]]:
    """The overrides of every job whose trainer settings may differ: the product over swept `experiment`,
    `trainer` and `trainer.*` values; any other sweep (seed, peft.lr) takes its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(given)
    choices = []
    for text, override in zip(given, parsed):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices.append([text])
            continue
        values = list(override.sweep_string_iterator())
        keep = values if key.lstrip("+~") in ("experiment", "trainer") or key.lstrip("+~").startswith("trainer.") \
            else values[:1]
        choices.append([f"{key}={v}" for v in keep])
    return [list(job) for job in itertools.product(*choices)]


def check_launch(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Raise UsageError or Refusal when `argv` asks a submitit launcher for a job that cannot run as asked."""
    choice = _launcher_choice(argv)
    if choice not in SUBMITIT_LAUNCHERS:
        return
    if "-m" not in argv and "--multirun" not in argv:
        raise UsageError(f"hydra/launcher={choice} takes effect only in a multirun: add -m (without it Hydra "
                         f"runs one local process and ignores the launcher)")
    if choice != "submitit_local" and shutil.which("sbatch") is None:
        raise Refusal(f"hydra/launcher={choice}: sbatch not found, so this machine cannot submit SLURM jobs: run "
                      f"it on a SLURM login node, or use hydra/launcher=submitit_local to run the job here")
    from hydra import compose, initialize_config_dir

    hydra_overrides = [a for a in argv if a.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        jobs = _jobs_to_check(argv)
        cfg = compose(config_name, overrides=jobs[0] + hydra_overrides, return_hydra_config=True)
        launcher = cfg.hydra.launcher
        nodes, tasks, gpus = int(launcher.nodes), int(launcher.tasks_per_node), launcher.gpus_per_node
        if nodes < 1 or tasks < 1:
            raise UsageError(f"hydra.launcher.nodes={nodes}, tasks_per_node={tasks}: both must be >= 1")
        if gpus and int(gpus) != tasks:
            raise UsageError(f"hydra.launcher.tasks_per_node={tasks} but gpus_per_node={gpus}: abba.train runs one "
                             f"process per GPU; set both to the number of GPUs per node (or gpus_per_node=0 for "
                             f"CPU processes)")
        if choice == "submitit_local" and not gpus:
            import torch

            if torch.cuda.is_available():  # submitit would hide them (CUDA_VISIBLE_DEVICES="") and train on the CPU
                raise UsageError(f"hydra/launcher=submitit_local gives its tasks no GPU unless "
                                 f"hydra.launcher.gpus_per_node is set: add hydra.launcher.gpus_per_node={tasks} (or "
                                 f"run with CUDA_VISIBLE_DEVICES= to train on the CPU)")
        world_size = nodes * tasks
        for job in jobs:
            trainer = cfg.trainer if job is jobs[0] else compose(config_name, overrides=job).trainer
            error = accumulation_error(trainer, world_size)
            if error:
                named = " ".join(o for o in job if o.startswith(("experiment=", "trainer")))
                raise UsageError(f"{named + ': ' if named else ''}{error} (hydra.launcher.nodes x tasks_per_node "
                                 f"= {nodes} x {tasks})")


def exit_on_bad_launch(config_dir: str | Path, config_name: str, argv: list[str] | None = None) -> None:
    """`check_launch` for a `__main__` block: print the one-line error and exit 2 (usage) or 1 (refusal)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_launch(config_dir, config_name, argv)
    except UsageError as exc:
        fail(str(exc), USAGE)
    except Refusal as exc:
        fail(str(exc), REFUSED)


def export_submitit_env() -> int:
    """In a task of a submitit job with several tasks, export torch.distributed's environment variables (what
    torchrun sets) from the job's layout; return the world size (1 outside such a job: nothing is changed)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return int(os.environ.get("WORLD_SIZE", "1"))
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return 1
    # CUDA_VISIBLE_DEVICES is left alone: each task sees the node's GPUs and accelerate picks cuda:LOCAL_RANK, as
    # under torchrun (hiding all but one GPU would leave LOCAL_RANK pointing past the visible ones). overwrite:
    # the job's layout beats variables inherited from the submitting shell.
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return int(env.world_size)


def main(argv: list[str] | None = None) -> None:
    """`python -m abba.launch world_size=N OVERRIDES`: abba.train's command-line check, the world-size check and
    its missing-input check (data and model files; nothing is loaded), once, before scripts/_launch.sh starts
    torchrun (whose N processes would each print the same error). Every argument but world_size= is a Hydra
    override of abba.train. Exit 2 for a bad command line, 1 for a missing or unreachable input."""
    from hydra import compose, initialize_config_dir

    from .base_model import check_model_source
    from .cli import one_line_errors
    from .data.sources import DataError, check_data_source
    from .gguf_source import ModelSourceError
    from .hydra_check import exit_on_bad_command_line
    from .layout import REPO_ROOT

    usage = "usage: python -m abba.launch world_size=N [overrides...]"
    argv = sys.argv[1:] if argv is None else argv
    given = [a.partition("=")[2] for a in argv if a.startswith("world_size=")]
    overrides = [a for a in argv if not a.startswith("world_size=")]
    if not given or not given[-1].isdigit() or int(given[-1]) < 1:
        fail(f"world_size={given[-1]} is not a number of processes (>= 1); {usage}" if given else
             f"world_size= is missing; {usage}", USAGE)
    exit_on_bad_command_line(REPO_ROOT / "configs", "train", overrides)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    error = accumulation_error(cfg.trainer, int(given[-1]))
    if error:
        fail(error, USAGE)
    with one_line_errors(refusals=(DataError, ModelSourceError)):  # as abba.train refuses them, before any work
        check_data_source(cfg.data)
        check_model_source(cfg.model)


if __name__ == "__main__":
    main()
