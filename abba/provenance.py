"""Provenance of a result: the commit, package versions and hardware that produced it (RUN/run_info.json)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from .layout import REPO_ROOT

PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "hydra-core", "safetensors")


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
