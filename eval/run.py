"""Evaluate a model on GSM8K, MATH or the commonsense benchmarks with the paper's protocol.

    python -m eval.run benchmark=gsm8k model_path=merged/ output_dir=results/exp/seed0
    python -m eval.run benchmark=commonsense model_path=merged/ output_dir=OUT backend=vllm tensor_parallel_size=2
    python -m eval.run benchmark=arithmetic model_path=merged/ output_dir=OUT backend=hf limit=20 batch_size=8
    python -m eval.run benchmark=commonsense model_path=merged/ output_dir=OUT limit=200 subset=random nll=true

Writes OUT/samples_<benchmark>.jsonl ({id, prompt, completion, prediction, gold, correct, ...} per item) and
OUT/metrics.json (one key per benchmark; other keys already there are kept). Items already in a samples file are
not generated again, so re-running a killed evaluation finishes it. Config: configs/eval.yaml. A sampled item draws
from its own random stream, seeded from (seed, "<benchmark>/<id>") (eval.backends.item_seed), so its completion
does not depend on batch_size, on the order or on resuming; metrics.json records dtype, model_dtype and batch_size.

`limit=N` evaluates N items of each benchmark (all of them when it has fewer): the first N (`subset=first`), or
with `subset=random` a sample drawn with `random.Random(subset_seed)`, kept in file order, that depends only on
the data file, so every model sees the same items. metrics.json records limit, subset, subset_seed, n and a hash
of the chosen ids (`item_ids_sha256`).

`nll=true` also scores, before generating, each item's gold response teacher-forced (eval.nll): prompt +
response + EOS tokenized by abba.data.tokenize_example as training does, NLL summed in nats over the response
tokens and the EOS, at the model's full context length (no truncation in practice). Per item it appends
{id, nll_sum, n_tokens, truncated} to OUT/nll_<benchmark>.jsonl (resumable like the samples file), and adds to
the benchmark's metrics `nll` (sum of nll_sum / sum of n_tokens: nats per token), `nll_items`, `nll_tokens`,
`nll_truncated`. Commonsense benchmarks' reference is the record's `output`; GSM8K's its worked solution in the
training format under the training prompt; MATH has none, and nll=true on it is an error. The HF backend's
model is reused; with vLLM an HF copy is loaded for the NLL pass and freed before vLLM starts.

Failures (abba/cli.py): one line on stderr, exit 2 for a bad command line (`benchmark=gsm8kk`, a missing key), 1
for anything else that stops the run before its work (a data file; a model_path that is missing, an adapter folder
rather than a merged model, or a Hub id that is neither cached nor reachable), 130 for Ctrl-C (the samples written
so far are kept: the same command resumes). model_path is a local folder when it exists or looks like a path
(abba.base_model.is_local_path: absolute, starting with '.' or '~', with two or more '/', or `dir/x` beside an
existing `dir/`); such a path is never looked up on the Hub. A failed run leaves no output folder it created empty.

One process: eval.run does not split items over processes. Under torchrun, or in a submitit job of several tasks
(WORLD_SIZE > 1), it refuses in one line (exit 2) rather than have every process generate every item into the
same files; evaluations are cheap next to training, so run one `python -m eval.run` per model. A model that does
not fit one GPU: `backend=vllm tensor_parallel_size=N` (vLLM shards it over N GPUs of this node, in its own
worker processes).

Here: the Hydra entry point and the order of the work. The checks of the command line are eval.checks, what a
re-run keeps eval.resume, the NLL pass eval.nll_pass, the samples files eval.samples.
"""


from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from abba.cli import INTERRUPTED, Refusal, UsageError, did_you_mean, fail, one_line_errors
from abba.files import write_json
from abba.layout import REPO_ROOT, removed_on_failure, resolve_path
from abba.provenance import git_commit

from .backends import choose_backend, make_backend
from .benchmarks import BENCHMARKS, load_items
from .checks import benchmark_names, check_model_path, check_nll, check_required, check_values
from .nll_pass import score_nll
from .resume import Progress, generation_settings, model_fingerprint, reuse_samples
from .samples import SampleWriter
from .scoring import score_record, scoring_options


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """configs/eval.yaml composed with `key=value` overrides, as the command line would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base=None):
        return compose("eval", overrides=list(overrides or []))


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Evaluate every benchmark named by cfg.benchmark; return their metrics entries."""
    check_required(cfg)
    names = benchmark_names(cfg.benchmark)
    check_values(cfg)
    nll = bool(cfg.get("nll", False))
    if nll:
        check_nll(names)
    out = Path(cfg.output_dir)
    # Files are created on first write (SampleWriter, write_json); a run that fails before writing anything
    # removes the folders it created, so no empty output folder is left for the next run to find.
    with removed_on_failure(out, keep=lambda: out.is_dir() and any(f.stat().st_size for f in out.rglob("*")
                                                                     if f.is_file())):
        return _evaluate(cfg, names, nll, out)


def _evaluate(cfg: DictConfig, names: list[str], nll: bool, out: Path) -> dict[str, dict]:
    model_path = str(Path(cfg.model_path).resolve())
    data_dir = resolve_path(cfg.paths.data_dir)
    # Read every data file before loading a model, so a missing file stops the run at once.
    items = {n: load_items(BENCHMARKS[n], data_dir, cfg.get("data_file"), cfg.get("limit"),
                           str(cfg.get("subset", "first")), int(cfg.get("subset_seed", 0)), references=nll)
             for n in names}
    try:
        backend_name = choose_backend(cfg.backend)
    except ValueError as error:
        raise UsageError(f"{error}{did_you_mean(cfg.backend, ('auto', 'hf', 'vllm'))}") from None
    backend = None  # created on first need: a finished evaluation re-run loads no model
    progress = Progress(OmegaConf.select(cfg, "debug.interrupt_after", default=None))
    nll_entries: dict[str, dict] = {}
    if nll:
        backend, nll_entries = score_nll(names, items, out, model_path, int(cfg.batch_size),
                                         lambda: _load_backend("hf", cfg), backend_name == "hf", progress)
    results: dict[str, dict] = {}
    for name in names:
        bench = BENCHMARKS[name]
        decoding = bench.decoding
        if cfg.get("max_new_tokens"):
            decoding = dataclasses.replace(decoding, max_new_tokens=int(cfg.max_new_tokens))
        scorer = bench.make_scorer(cfg)
        options = scoring_options(cfg)
        generation = generation_settings(decoding, bench.stop, int(cfg.seed), backend_name, cfg.get("dtype"))
        try:
            samples_path = out / f"samples_{name}.jsonl"
            done = reuse_samples(samples_path, model_path, scorer, options, generation,
                                 {it.id: it.prompt for it in items[name]}, _read_metrics(out).get(name))
            pending = [item for item in items[name] if item.id not in done]
            if pending:
                backend = backend or _load_backend(backend_name, cfg)
                _generate(backend, name, pending, decoding, int(cfg.seed), samples_path, done,
                          lambda record: score_record(scorer, record, options), model_path, generation, progress)
            scored_records = [done[item.id] for item in items[name]]
            results[name] = _metrics_entry(cfg, name, decoding, bench.stop, scored_records, backend_name,
                                           {**scorer.summary(scored_records), **nll_entries.get(name, {})})
        finally:
            scorer.close()
        metrics = _read_metrics(out)
        metrics[name] = results[name]
        write_json(out / "metrics.json", metrics)
        nll_text = f", nll={results[name]['nll']:.4f}" if results[name].get("nll") is not None else ""
        print(f"{name}: accuracy={results[name]['accuracy']:.4f} (n={results[name]['n']}, "
              f"n_invalid={results[name]['n_invalid']}){nll_text}", flush=True)
    return results


def _generate(backend, name: str, pending: list, decoding, seed: int, path: Path, done: dict[str, dict], score,
              model_path: str, generation: dict[str, Any], progress: Progress) -> None:
    """Generate and score the `pending` items of benchmark `name`, appending each batch's records to `path` (the
    samples file) and to `done` (by id)."""
    fingerprint = model_fingerprint(model_path)  # once per file: it stats the model folder
    with SampleWriter(path) as writer:
        # Each item's random stream is seeded from (seed, benchmark/id) alone, so neither the batch size nor the
        # items already done (a resumed run) change what it samples.
        batches = backend.generate([it.prompt for it in pending], decoding, BENCHMARKS[name].stop, seed=seed,
                                   desc=name, keys=[f"{name}/{it.id}" for it in pending])
        for batch in batches:
            records = []
            for index, completion in batch:
                item = pending[index]
                record = {"id": item.id, "benchmark": name, "prompt": item.prompt, "completion": completion,
                          "prediction": None, "gold": item.gold, "correct": None, "model_path": model_path,
                          "generation": generation, "model_dtype": getattr(backend, "dtype", None),
                          "model_fingerprint": fingerprint}
                records.append(score(record))
                done[item.id] = records[-1]
            writer.append(records)
            progress.add(len(records))


def _backend_options(cfg: DictConfig) -> dict[str, Any]:
    keys = ("batch_size", "dtype", "device", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "seed")
    return {k: cfg[k] for k in keys if cfg.get(k) is not None}


def _load_backend(name: str, cfg: DictConfig):
    check_model_path(str(cfg.model_path))  # one line instead of from_pretrained's Hub retries and traceback
    return make_backend(name, str(cfg.model_path), **_backend_options(cfg))


def _read_metrics(out: Path) -> dict[str, Any]:
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
        # dtype as asked (auto: float32 on CPU, the saved dtype on GPU) and as loaded by the runs that generated
        # these records; batch_size does not change a completion (per-item sampling) but is recorded with them.
        "dtype": None if cfg.get("dtype") is None else str(cfg.dtype),
        "model_dtype": sorted({str(r["model_dtype"]) for r in records if r.get("model_dtype")}) or None,
        "batch_size": None if cfg.get("batch_size") is None else int(cfg.batch_size),
        "model_path": str(cfg.model_path),
        "limit": cfg.get("limit"),
        "subset": str(cfg.get("subset", "first")),
        "subset_seed": int(cfg.get("subset_seed", 0)),
        # n = how many items were chosen; this hash of their ids tells whether two runs saw the same ones.
        "item_ids_sha256": hashlib.sha256("\n".join(str(r["id"]) for r in records).encode()).hexdigest()[:16],
        "scoring": scoring_options(cfg),
        "git_commit": git_commit(),
        **extra,
    }


def interrupted_message(output_dir) -> str:
    """What Ctrl-C leaves: the scored items already in OUT's samples/NLL files, which the same command resumes from."""
    out = Path(str(output_dir))
    kept = {f.name: sum(1 for line in f.read_text().splitlines() if line.strip())
            for f in sorted(out.glob("*.jsonl")) if f.name.startswith(("samples_", "nll_"))} if out.is_dir() else {}
    kept = {name: n for name, n in kept.items() if n}
    if not kept:
        return "interrupted before any item was scored: run the same command again to start over"
    files = ", ".join(f"{n} in {name}" for name, n in kept.items())
    return (f"interrupted: the items scored so far are kept in {out} ({files}); run the same command again to "
            f"resume: they are not generated again")


@hydra.main(version_base=None, config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    # Refusals: a data file or model that is missing (OSError, FileNotFoundError), samples of another model
    # (ValueError), vLLM not installed (ImportError); anything else is a bug and keeps its traceback.
    with one_line_errors(refusals=(Refusal, OSError, ValueError, ImportError)):
        try:
            results = evaluate(cfg)
            print(f"eval.run: wrote {Path(cfg.output_dir) / 'metrics.json'} and "
                  f"{', '.join(f'samples_{name}.jsonl' for name in results)} in {cfg.output_dir}", flush=True)
        except KeyboardInterrupt:  # counted after the fact: the message says what a re-run resumes from
            fail(interrupted_message(cfg.get("output_dir", "")), INTERRUPTED)


if __name__ == "__main__":
    from abba.hydra_check import exit_on_bad_command_line

    with one_line_errors(on_interrupt="interrupted before any item was scored: run the same command again"):
        exit_on_bad_command_line(REPO_ROOT / "configs", "eval")
        main()
