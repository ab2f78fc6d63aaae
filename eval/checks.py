"""eval.run's checks of its command line, made before any data or model is loaded: every key given, benchmark
names (with close matches for a typo), value types and ranges, the launch (one process), nll=true only where a
reference exists, and a model_path that from_pretrained can load as a model. Each failure is one line: UsageError
(exit 2) for a bad command line, Refusal (exit 1) for a model_path that is not a model (abba/cli.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from abba.cli import Refusal, UsageError, did_you_mean

from .benchmarks import BENCHMARKS, GROUPS, resolve


def check_required(cfg: DictConfig) -> None:
    """Refuse a command line without benchmark=, model_path= or output_dir= (the keys configs/eval.yaml leaves ???)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"missing {' '.join(k + '=...' for k in missing)}: "
                         "python -m eval.run benchmark=NAME model_path=DIR output_dir=OUT")


def benchmark_names(value) -> list[str]:
    """eval.benchmarks.resolve, with a misspelt name a UsageError that suggests the close ones."""
    try:
        return resolve(value)
    except ValueError as error:
        bad = re.search(r"unknown benchmark '([^']*)'", str(error))
        name = bad.group(1) if bad else str(value)
        raise UsageError(f"unknown benchmark {name!r}{did_you_mean(name, [*BENCHMARKS, *GROUPS])}: choose from "
                         f"{', '.join(BENCHMARKS)}, or a group: {', '.join(GROUPS)}") from None


def check_nll(names: list[str]) -> None:
    """Refuse nll=true for a benchmark without a reference response (MATH)."""
    no_reference = [n for n in names if BENCHMARKS[n].reference is None]
    if no_reference:
        raise UsageError(f"nll=true needs a reference response, which {', '.join(no_reference)} does not have "
                         f"(benchmarks with one: {', '.join(n for n in BENCHMARKS if BENCHMARKS[n].reference)})")


def check_debug(cfg: DictConfig) -> None:
    """Refuse a test switch eval.run does not read (`+debug.interrupt_afer=3`) or a value it cannot use: the one
    switch is `+debug.interrupt_after=N` (N >= 1; raise after N newly scored items, for the resume tests)."""
    debug = cfg.get("debug")
    if debug is None:
        return
    if not OmegaConf.is_dict(debug):
        raise UsageError(f"debug={debug}: must be switches, e.g. +debug.interrupt_after=3")
    for name, value in debug.items():
        if name != "interrupt_after":
            raise UsageError(f"unknown test switch debug.{name}{did_you_mean(f'debug.{name}', ['debug.interrupt_after'])}"
                             ": known: debug.interrupt_after")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"debug.interrupt_after={value}: must be an integer >= 1 or null")


def check_values(cfg: DictConfig) -> None:
    """Refuse (UsageError, naming the key) a value that would otherwise fail after the model has loaded, or
    write an empty evaluation: the test switches (check_debug), limit, subset, batch size, max_new_tokens, tensor_parallel_size, dtype, device; and
    a launch on several processes (eval.run's docstring says why)."""
    check_debug(cfg)
    import torch

    from abba.base_model import DTYPES

    def integer(key: str, low: int, allow_null: bool) -> None:
        value = cfg.get(key)
        if value is None and allow_null:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{key}={value}: must be an integer >= {low}" + (" or null" if allow_null else ""))

    integer("limit", 1, True)
    integer("max_new_tokens", 1, True)
    integer("batch_size", 1, False)
    integer("subset_seed", 0, False)
    integer("seed", 0, False)
    integer("tensor_parallel_size", 1, True)
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world not in ("", "1"):
        raise UsageError(f"eval.run runs as one process, but WORLD_SIZE={world} (torchrun or several submitit "
                         f"tasks): launch it as plain `python -m eval.run ...`; for a model too large for one GPU "
                         f"use backend=vllm tensor_parallel_size=N")
    if str(cfg.get("subset", "first")) not in ("first", "random"):
        raise UsageError(f"subset={cfg.subset}: must be first or random{did_you_mean(cfg.subset, ('first', 'random'))}")
    dtype = str(cfg.get("dtype", "auto"))
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"dtype={dtype}: must be auto or one of {', '.join(DTYPES)}{did_you_mean(dtype, DTYPES)}")
    device = str(cfg.get("device", "auto"))
    if device != "auto":
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise UsageError(f"device={device}: must be auto, cpu, cuda or cuda:N") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device={device}: this machine has no CUDA device; use device=auto or device=cpu")


def check_model_path(model_path: str) -> None:
    """Refuse, before anything is loaded, a model_path that from_pretrained cannot load as a model.

    A local-looking path (abba.base_model.is_local_path) is checked here and never looked up on the Hub: it must be
    a folder with a config.json; an adapter folder (RUN/final) gets the abba.merge command that makes a model of
    it. A Hub id must be cached or answer one request (abba.base_model.check_pretrained_path)."""
    from abba.gguf_source import ModelSourceError
    from abba.base_model import check_pretrained_path, is_local_path

    merge_hint = "pass the folder that python -m abba.merge wrote (its output_dir=)"
    if not is_local_path(model_path):
        try:
            check_pretrained_path(model_path, what="model_path")
        except ModelSourceError as error:
            raise Refusal(f"{error} (and no local folder {model_path} exists)") from None
        return
    path = Path(model_path).expanduser()
    if not path.exists():
        raise Refusal(f"model_path={model_path} does not exist (a local path: not looked up on the Hugging Face "
                      f"Hub): {merge_hint}")
    if not path.is_dir():
        raise Refusal(f"model_path={model_path} is a file: {merge_hint}")
    if (path / "config.json").is_file():
        return
    if (path / "adapter_config.json").is_file() or (path / "abba_model.yaml").is_file():
        merged = path.parent / "merged"
        raise Refusal(f"model_path={model_path} is an adapter folder, not a merged model: merge it first with "
                      f"`python -m abba.merge adapter_dir={model_path} output_dir={merged}`, then pass "
                      f"model_path={merged}")
    raise Refusal(f"model_path={model_path} holds no config.json, so it is not a model folder: {merge_hint}")
