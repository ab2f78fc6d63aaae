"""The run folder of a training run: its name, the refusal to clobber it, run_info.json, atomic writes.

RUN = `<paths.output_root>/<experiment_name>/seed<seed>[/<sorted overrides>]` unless `output_dir=` is given.
The name depends only on the command line (never a timestamp), so every rank of a multi-process job agrees.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .modeling import REPO_ROOT

#: Overrides that choose where/how a run executes but not what it learns: left out of the folder name
#: (the experiment and seed are in it already). Exact keys, and prefixes ending in '.' or '/'.
NAME_EXCLUDED = ("experiment", "seed", "output_dir", "resume", "overwrite", "trainer", "logger",
                 "dump_init_adapter", "interrupt_at_step", "data.path", "data.num_proc", "trainer.save_steps",
                 "trainer.save_total_limit", "trainer.logging_steps", "trainer.dataloader_num_workers",
                 "trainer.disable_tqdm", "paths.", "logger.", "hydra.", "hydra/", "sweep")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "hydra-core", "safetensors")


class RunFolderError(RuntimeError):
    """The run folder exists and may not be reused as asked; the message is one line."""


def override_suffix(overrides: Iterable[str]) -> str:
    """'peft.lr=0.0001,peft.r1=8' from command-line overrides that change what is trained (sorted, '/' -> '_')."""
    kept = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if any(key.startswith(ex) if ex[-1] in "./" else key == ex for ex in NAME_EXCLUDED):
            continue
        kept.append(item.lstrip("+~").replace("/", "_"))
    return ",".join(sorted(kept))


def default_run_dir(output_root: str, experiment_name: str, seed: int, overrides: Iterable[str] = ()) -> str:
    run = Path(output_root) / experiment_name / f"seed{seed}"
    suffix = override_suffix(overrides)
    return str(run / suffix) if suffix else str(run)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "final").is_dir()


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse (before anything is written) to reuse a non-empty run folder without resume= or overwrite=."""
    if resume and overwrite:
        raise RunFolderError("resume=true and overwrite=true contradict each other: pick one")
    if not run_dir.exists() or not any(run_dir.iterdir()) or resume or overwrite:
        return
    state = "a finished run" if is_finished(run_dir) else "an unfinished run"
    raise RunFolderError(f"run folder {run_dir} already holds {state}: pass resume=true to continue it, "
                         f"overwrite=true to replace it, or output_dir=... for a new folder")


def clear_run_folder(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def git_commit() -> str | None:
    """HEAD's hash, with "+dirty" when tracked files differ from it (the code that ran is then not that commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    if not commit:
        return None
    return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_info(experiment_name: str, seed: int, method: str, world_size: int, trainable: int, total: int,
             **extra: Any) -> dict[str, Any]:
    return {"git_commit": git_commit(), "packages": package_versions(), "hardware": hardware(),
            "world_size": world_size, "trainable_params": trainable, "total_params": total, "method": method,
            "experiment_name": experiment_name, "seed": seed, **extra}


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
