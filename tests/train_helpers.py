"""Helpers shared by the training tests: compose a config, run abba.train in a subprocess, snapshot a folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from abba.layout import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def compose_train(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def train_env(data_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ABBA_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_train(args: list[str], data_dir: Path, cwd: Path, nproc: int = 1, timeout: int = 600):
    """`python -m abba.train ARGS` (or torchrun with `nproc` processes) from `cwd`; returns CompletedProcess."""
    if nproc > 1:
        with socket.socket() as s:  # a free port, so parallel test runs do not collide
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "abba.train", *args]
    else:
        cmd = [sys.executable, "-m", "abba.train", *args]
    env = train_env(data_dir)
    # One thread per process: on a busy 2-core machine OpenMP's spinning threads make a tiny model 5x slower.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@contextmanager
def single_thread():
    """torch on one intra-op thread for an in-process run (see run_train), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time (to prove nothing changed)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


#: Issue 14's bf16 parity runs (tests/test_train_distributed.py, tests/test_zero3_bf16.py): a bf16 base, 4 steps,
#: lr 1e-2 (warmup: 0, 1e-2, 7.5e-3, 2.5e-3), batches 2k and 2k+1 of 4 sequences accumulated in one process or
#: split over two.
BF16_SMOKE = ["experiment=smoke_arithmetic", "model.dtype=bfloat16", "trainer.bf16=true", "trainer.max_steps=4",
              "trainer.save_steps=100", "trainer.per_device_train_batch_size=4",
              "trainer.gradient_accumulation_steps=2"]


def bf16_single_and_two_processes(trainer: str, data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Train BF16_SMOKE in one process and in two under `trainer` (zero2/zero3); their run folders."""
    single = run_train(BF16_SMOKE + [f"output_dir={tmp_path / 'single'}"], data_dir, tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    two = run_train(BF16_SMOKE + [f"trainer={trainer}", f"output_dir={tmp_path / trainer}"], data_dir, tmp_path,
                    nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp_path / "single", tmp_path / trainer
