"""Evaluate a model on GSM8K, MATH or the commonsense benchmarks with the paper's protocol.

    python -m eval.run benchmark=gsm8k model_path=merged/ output_dir=results/exp/seed0
    python -m eval.run benchmark=commonsense model_path=merged/ output_dir=OUT backend=vllm tensor_parallel_size=2
    python -m eval.run benchmark=arithmetic model_path=merged/ output_dir=OUT backend=hf limit=20 batch_size=8

Writes OUT/samples_<benchmark>.jsonl ({id, prompt, completion, prediction, gold, correct, ...} per item) and
OUT/metrics.json (one key per benchmark; other keys already there are kept). Items already in a samples file are
not generated again, so re-running a killed evaluation finishes it. Config: configs/eval.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from abba.modeling import REPO_ROOT, resolve_path
from abba.run_folder import git_commit, write_json

from .backends import choose_backend, make_backend
from .benchmarks import BENCHMARKS, load_items, resolve
from .samples import SampleWriter, read_samples


class SimulatedInterrupt(RuntimeError):
    """Raised by `interrupt_after=N` (tests of resuming)."""


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """configs/eval.yaml composed with `key=value` overrides, as the command line would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base=None):
        return compose("eval", overrides=list(overrides or []))


def _read_metrics(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _backend_options(cfg: DictConfig) -> dict[str, Any]:
    keys = ("batch_size", "dtype", "device", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "seed")
    return {k: cfg[k] for k in keys if cfg.get(k) is not None}


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Evaluate every benchmark named by cfg.benchmark; return their metrics entries."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"missing {' '.join(k + '=...' for k in missing)} "
                         "(python -m eval.run benchmark=NAME model_path=DIR output_dir=OUT)")
    names = resolve(cfg.benchmark)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = resolve_path(cfg.paths.data_dir)
    # Read every data file before loading a model, so a missing file stops the run at once.
    items = {n: load_items(BENCHMARKS[n], data_dir, cfg.get("data_file"), cfg.get("limit")) for n in names}
    backend_name = choose_backend(cfg.backend)
    backend = None  # created on first need: a finished evaluation re-run loads no model
    results: dict[str, dict] = {}
    newly_scored = 0
    for name in names:
        bench = BENCHMARKS[name]
        decoding = bench.decoding
        if cfg.get("max_new_tokens"):
            decoding = dataclasses.replace(decoding, max_new_tokens=int(cfg.max_new_tokens))
        samples_path = out / f"samples_{name}.jsonl"
        done = read_samples(samples_path)
        pending = [item for item in items[name] if item.id not in done]
        scorer = bench.make_scorer(cfg)
        try:
            if pending:
                backend = backend or make_backend(backend_name, str(cfg.model_path), **_backend_options(cfg))
                with SampleWriter(samples_path) as writer:
                    batches = backend.generate([it.prompt for it in pending], decoding, bench.stop,
                                               seed=int(cfg.seed), desc=name)
                    for batch in batches:
                        records = []
                        for index, completion in batch:
                            item = pending[index]
                            scored = scorer.score(completion, item.gold)
                            records.append({"id": item.id, "prompt": item.prompt, "completion": completion,
                                            "prediction": scored["prediction"], "gold": item.gold,
                                            "correct": scored["correct"],
                                            **{k: v for k, v in scored.items() if k not in ("prediction", "correct")}})
                            done[item.id] = records[-1]
                        writer.append(records)
                        newly_scored += len(records)
                        if cfg.get("interrupt_after") is not None and newly_scored >= int(cfg.interrupt_after):
                            raise SimulatedInterrupt(f"interrupt_after={cfg.interrupt_after} reached")
            scored_records = [done[item.id] for item in items[name]]
            results[name] = _metrics_entry(cfg, name, decoding, bench.stop, scored_records, backend_name,
                                           scorer.summary(scored_records))
        finally:
            scorer.close()
        metrics = _read_metrics(out / "metrics.json")
        metrics[name] = results[name]
        write_json(out / "metrics.json", metrics)
        print(f"{name}: accuracy={results[name]['accuracy']:.4f} (n={results[name]['n']}, "
              f"n_invalid={results[name]['n_invalid']})", flush=True)
    return results


def _metrics_entry(cfg: DictConfig, name: str, decoding, stop, records: list[dict], backend: str,
                   extra: dict) -> dict[str, Any]:
    n = len(records)
    return {
        "benchmark": name,
        "accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0,
        "n": n,
        "n_invalid": sum(r["prediction"] is None for r in records),
        "backend": backend,
        "decoding": {**decoding.as_dict(), "stop": list(stop), "seed": int(cfg.seed)},
        "model_path": str(cfg.model_path),
        "limit": cfg.get("limit"),
        "git_commit": git_commit(),
        **extra,
    }


@hydra.main(version_base=None, config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError, ImportError) as error:  # bad input: one line, no traceback
        sys.exit(f"eval.run: {error}")


if __name__ == "__main__":
    from abba.hydra_check import exit_on_bad_command_line

    exit_on_bad_command_line(REPO_ROOT / "configs", "eval")
    main()
