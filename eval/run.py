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
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from abba.cli import INTERRUPTED, Refusal, UsageError, did_you_mean, fail, one_line_errors
from abba.layout import REPO_ROOT, resolve_path
from abba.provenance import git_commit
from abba.layout import removed_on_failure
from abba.files import write_text, write_json

from . import nll as nll_scoring
from .backends import SAMPLING_SCHEME, choose_backend, make_backend
from .benchmarks import BENCHMARKS, GROUPS, load_items, resolve
from .samples import SampleWriter, read_samples


class SimulatedInterrupt(RuntimeError):
    """Raised by `interrupt_after=N` (tests of resuming)."""


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """configs/eval.yaml composed with `key=value` overrides, as the command line would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base=None):
        return compose("eval", overrides=list(overrides or []))


#: configs/eval.yaml keys that change how a completion is scored, not what is generated. Each sample records them,
#: so a re-run with other values re-scores the saved completions instead of mixing two scorings.
SCORING_OPTIONS = ("gsm8k_round_prediction", "math_exception_correct", "math_timeout_s")


class SamplesMismatchError(ValueError):
    """A samples file in output_dir was generated by another model; the message is one line."""


def benchmark_names(value) -> list[str]:
    """eval.benchmarks.resolve, with a misspelt name a UsageError that suggests the close ones."""
    try:
        return resolve(value)
    except ValueError as error:
        bad = re.search(r"unknown benchmark '([^']*)'", str(error))
        name = bad.group(1) if bad else str(value)
        raise UsageError(f"unknown benchmark {name!r}{did_you_mean(name, [*BENCHMARKS, *GROUPS])}: choose from "
                         f"{', '.join(BENCHMARKS)}, or a group: {', '.join(GROUPS)}") from None


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


def scoring_options(cfg) -> dict[str, Any]:
    return {k: cfg[k] for k in SCORING_OPTIONS}


def score_record(scorer, record: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """`record` (with `completion` and `gold`) with prediction, correct and the scorer's extra fields filled in."""
    return {**record, **scorer.score(record["completion"], record["gold"]), "scoring": options}


class _Progress:
    """Counts newly scored items (generations, and NLLs with nll=true); raises at `interrupt_after`."""

    def __init__(self, interrupt_after: int | None):
        self.limit, self.count = interrupt_after, 0

    def add(self, n: int) -> None:
        self.count += n
        if self.limit is not None and self.count >= int(self.limit):
            raise SimulatedInterrupt(f"interrupt_after={self.limit} reached")


def model_fingerprint(model_path: str) -> str:
    """What tells two models at one path apart (a run retrained with overwrite=true and merged again): the sha256
    of the folder's merge_info.json and its files' names, sizes and modification times. Reading 14 GB of weights
    to hash them would cost more than the evaluation; a re-merge rewrites the files, which this sees. A Hub id is
    its own fingerprint."""
    folder = Path(model_path)
    if not folder.is_dir():
        return hashlib.sha256(model_path.encode()).hexdigest()[:16]
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    info = folder / "merge_info.json"
    payload = json.dumps([stats, info.read_text() if info.is_file() else None])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_own_records(path: Path, model_path: str, what: str) -> dict[str, dict]:
    """The records already in `path` (a resumed run), checked to come from this model: another model_path is
    refused; the same path holding another model now (its fingerprint changed) has its records made again."""
    done = read_samples(path)
    other = {r["model_path"] for r in done.values() if r.get("model_path", model_path) != model_path}
    if other:
        raise SamplesMismatchError(f"{path} holds {what} of {sorted(other)[0]}, not {model_path}: "
                                   "use another output_dir or delete the file")
    fingerprint = model_fingerprint(model_path)
    stale = [k for k, r in done.items() if r.get("model_fingerprint", fingerprint) != fingerprint]
    if stale:
        print(f"eval.run: the model at {model_path} changed since {len(stale)} {what} in {path.name} were made: "
              f"making them again", flush=True)
        done = {k: r for k, r in done.items() if k not in stale}
        write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


def generation_settings(decoding, stop, seed: int, backend: str, dtype) -> dict[str, Any]:
    """Everything besides the model and the prompt that decides a completion; stored in each samples record.
    Sampled decoding adds the per-item seeding scheme (eval.backends.SAMPLING_SCHEME), so a file sampled under an
    older scheme is generated again. The batch size is not in it: it does not change a completion."""
    settings = {"decoding": {**decoding.as_dict(), "stop": list(stop), "seed": int(seed)}, "backend": backend,
                "dtype": None if dtype is None else str(dtype)}
    if decoding.do_sample:
        settings["sampling"] = SAMPLING_SCHEME
    return settings


def _settings_of(record: dict, legacy: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record's generation settings; a record written before they were stored takes its metrics.json entry's
    (decoding and backend, which produced it; dtype unknown: any)."""
    if "generation" in record:
        return record["generation"]
    if legacy and legacy.get("decoding") is not None:
        return {"decoding": legacy["decoding"], "backend": legacy.get("backend"), "dtype": None}
    return None


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed between two generation settings ("" for nothing); unknown old settings (a file from before
    they were recorded, with no metrics.json entry) cannot be told apart, so they count as the same."""
    if old is None:
        return ""
    flat = lambda d: {**{k: v for k, v in d.items() if k != "decoding"}, **d.get("decoding", {})}  # noqa: E731
    a, b = flat(old), flat(new)
    changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and not (k == "dtype" and a.get(k) is None)]
    return ", ".join(changed)


def _reuse_samples(path: Path, model_path: str, scorer, options: dict[str, Any], generation: dict[str, Any],
                   prompts: dict[str, str], legacy: dict[str, Any] | None = None) -> dict[str, dict]:
    """The records already in `path` (a resumed run), checked to come from this model and scored as now.

    A record generated from another prompt or with other generation settings (`generation_settings`: decoding,
    stop strings, seed, backend, dtype) is dropped, so its item is generated again: completions are never reused
    across settings (say max_new_tokens=16, then the default 256)."""
    done = _read_own_records(path, model_path, "generations")
    changed = {}
    for key, record in done.items():
        settings = _settings_of(record, legacy)
        difference = _differences(settings, generation)
        if key in prompts and record.get("prompt") != prompts[key]:
            difference = "prompt changed"
        if difference:
            changed[key] = difference
    if changed:
        reasons = sorted(set(changed.values()))
        print(f"eval.run: generating {len(changed)} items of {path.name} again: {'; '.join(reasons)[:300]}",
              flush=True)
        done = {k: r for k, r in done.items() if k not in changed}
        write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    stale = [key for key, r in done.items() if r.get("scoring") != options]
    if stale:
        for key in stale:
            done[key] = score_record(scorer, done[key], options)
        write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


def _read_metrics(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _backend_options(cfg: DictConfig) -> dict[str, Any]:
    keys = ("batch_size", "dtype", "device", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "seed")
    return {k: cfg[k] for k in keys if cfg.get(k) is not None}


def _load_backend(name: str, cfg: DictConfig):
    check_model_path(str(cfg.model_path))  # one line instead of from_pretrained's Hub retries and traceback
    return make_backend(name, str(cfg.model_path), **_backend_options(cfg))


def _score_nll(cfg: DictConfig, names: list[str], items: dict[str, list], out: Path, model_path: str,
               backend_name: str, progress: _Progress):
    """Teacher-forced NLL of every item's reference (eval.nll), resumable via OUT/nll_<benchmark>.jsonl.

    Runs before any generation. The HF model is loaded on the backend's device with the backend's dtype; with
    backend=hf it *is* the generation backend and is returned for reuse (no second copy), otherwise it is
    freed before vLLM starts. Returns (the HF backend or None, {benchmark: metrics.json fields})."""
    hf = None  # created on first need, like the generation backend
    entries: dict[str, dict] = {}
    for name in names:
        path = out / f"nll_{name}.jsonl"
        done = _read_own_records(path, model_path, "NLLs")
        pending = [item for item in items[name] if item.id not in done]
        if pending:
            hf = hf or _load_backend("hf", cfg)
            fingerprint = model_fingerprint(model_path)  # once per file: it stats the model folder
            with SampleWriter(path) as writer:
                for batch in nll_scoring.score(hf.model, hf.tokenizer, [it.reference for it in pending],
                                               batch_size=int(cfg.batch_size), desc=name):
                    records = [{"id": pending[i].id, **result, "model_path": model_path,
                                "model_fingerprint": fingerprint} for i, result in batch]
                    writer.append(records)
                    done.update((r["id"], r) for r in records)
                    progress.add(len(records))
        entries[name] = nll_scoring.summary([done[item.id] for item in items[name]])
    if hf is not None and backend_name != "hf":
        hf = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return hf, entries


def evaluate(cfg: DictConfig) -> dict[str, dict]:
    """Evaluate every benchmark named by cfg.benchmark; return their metrics entries."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"missing {' '.join(k + '=...' for k in missing)}: "
                         "python -m eval.run benchmark=NAME model_path=DIR output_dir=OUT")
    names = benchmark_names(cfg.benchmark)
    check_values(cfg)
    nll = bool(cfg.get("nll", False))
    no_reference = [n for n in names if BENCHMARKS[n].reference is None]
    if nll and no_reference:
        raise UsageError(f"nll=true needs a reference response, which {', '.join(no_reference)} does not have "
                         f"(benchmarks with one: {', '.join(n for n in BENCHMARKS if BENCHMARKS[n].reference)})")
    out = Path(cfg.output_dir)
    # Files are created on first write (SampleWriter, write_json); a run that fails before writing anything
    # removes the folders it created, so no empty output folder is left for the next run to find.
    with removed_on_failure(out, keep=lambda: out.is_dir() and any(f.stat().st_size for f in out.rglob("*")
                                                                     if f.is_file())):
        return _evaluate(cfg, names, nll, out)


def check_values(cfg: DictConfig) -> None:
    """Refuse (UsageError, naming the key) a value that would otherwise fail after the model has loaded, or
    write an empty evaluation: limit, subset, batch size, max_new_tokens, tensor_parallel_size, dtype, device; and
    a launch on several processes (see the module docstring)."""
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
    results: dict[str, dict] = {}
    progress = _Progress(cfg.get("interrupt_after"))
    nll_entries: dict[str, dict] = {}
    if nll:
        backend, nll_entries = _score_nll(cfg, names, items, out, model_path, backend_name, progress)
    for name in names:
        bench = BENCHMARKS[name]
        decoding = bench.decoding
        if cfg.get("max_new_tokens"):
            decoding = dataclasses.replace(decoding, max_new_tokens=int(cfg.max_new_tokens))
        samples_path = out / f"samples_{name}.jsonl"
        scorer = bench.make_scorer(cfg)
        options = scoring_options(cfg)
        generation = generation_settings(decoding, bench.stop, int(cfg.seed), backend_name, cfg.get("dtype"))
        try:
            done = _reuse_samples(samples_path, model_path, scorer, options, generation,
                                  {it.id: it.prompt for it in items[name]},
                                  _read_metrics(out / "metrics.json").get(name))
            pending = [item for item in items[name] if item.id not in done]
            if pending:
                backend = backend or _load_backend(backend_name, cfg)
                fingerprint = model_fingerprint(model_path)  # once per file: it stats the model folder
                with SampleWriter(samples_path) as writer:
                    # Each item's random stream is seeded from (seed, benchmark/id) alone, so neither the batch
                    # size nor the items already done (a resumed run) change what it samples.
                    batches = backend.generate([it.prompt for it in pending], decoding, bench.stop,
                                               seed=int(cfg.seed), desc=name,
                                               keys=[f"{name}/{it.id}" for it in pending])
                    for batch in batches:
                        records = []
                        for index, completion in batch:
                            item = pending[index]
                            record = {"id": item.id, "benchmark": name, "prompt": item.prompt,
                                      "completion": completion, "prediction": None, "gold": item.gold,
                                      "correct": None, "model_path": model_path, "generation": generation,
                                      "model_dtype": getattr(backend, "dtype", None),
                                      "model_fingerprint": fingerprint}
                            records.append(score_record(scorer, record, options))
                            done[item.id] = records[-1]
                        writer.append(records)
                        progress.add(len(records))
            scored_records = [done[item.id] for item in items[name]]
            results[name] = _metrics_entry(cfg, name, decoding, bench.stop, scored_records, backend_name,
                                           {**scorer.summary(scored_records), **nll_entries.get(name, {})})
        finally:
            scorer.close()
        metrics = _read_metrics(out / "metrics.json")
        metrics[name] = results[name]
        write_json(out / "metrics.json", metrics)
        nll_text = f", nll={results[name]['nll']:.4f}" if results[name].get("nll") is not None else ""
        print(f"{name}: accuracy={results[name]['accuracy']:.4f} (n={results[name]['n']}, "
              f"n_invalid={results[name]['n_invalid']}){nll_text}", flush=True)
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
