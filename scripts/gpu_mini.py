#!/usr/bin/env python3
"""`python -m abba.mini size=full` on one GPU, its three independent strands side by side (scripts/gpu_check.sh).

abba.mini runs the full size serially: the base model's evaluation, then ABBA (train, merge, evaluate), then LoRA.
Each of these processes of a 135M-parameter model is bound by Python dispatch and kernel launches (~13K aten ops
per training step, ~2.6K per generated token), not by the H200, so this driver runs the three strands at once
(the base model's evaluation during the two trainings; the machine has 16 cores), a trained model's four
eval.run commands at once, then the tables. The commands are mini's own (Job.command, evaluate_base,
evaluate_run, evaluate), so are the files (results/mini_gpu/, run folders in outputs/mini_gpu/); every step is
skipped when its output exists, so a killed run continues where it stopped.

    python scripts/gpu_mini.py [--dry-run] [--serial] [--logs DIR] [--selection FILE]
                               [--records N] [--limit N] [--override KEY=VALUE ...]

Settings: each method's learning rate (and ABBA's alpha) from the CPU sweep, results/mini/selection.json. While
that sweep has not chosen yet, the quickstart's settings (mini.SIZES["quick"].fixed) are used and the summary
says so. Cuts, only when asked: --records N trains on N records instead of all 17,498 (data.subset_size),
--limit N scores N seeded items of each test set instead of all; a cut run writes results/mini_gpu_cut/ and
outputs/mini_gpu_cut/, never the full size's folders. --override adds a training override to both methods
(gpu_check.sh passes trainer.save_steps=256: 4 checkpoints instead of 68; it changes no result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abba import mini  # noqa: E402

_local = threading.local()
_lock = threading.Lock()
TIMINGS: list[dict] = []


def log(message: str) -> None:
    with _lock:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_logged(command: list[str]) -> None:
    """mini._run, with the output in the strand's own log file and the duration recorded."""
    if getattr(_local, "capture", None) is not None:  # evaluate_parallel collecting mini.evaluate's commands
        _local.capture.append(command)
        return
    strand = getattr(_local, "strand", "main")
    logs = getattr(_local, "logs", None)
    text = " ".join(command)
    # Each strand its own datasets cache: two trainings tokenizing the same files at once write no shared file.
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    env = {**os.environ, "HF_DATASETS_CACHE": str(hf_home / f"datasets-{strand}")}
    log(f"{strand}: + {text}")
    start = time.time()
    rc = None
    try:
        if logs is None:
            rc = subprocess.run(command, cwd=mini.REPO_ROOT, env=env).returncode
        else:
            with open(logs / f"{strand}.log", "a") as out:
                out.write(f"+ {text}\n")
                out.flush()
                rc = subprocess.run(command, cwd=mini.REPO_ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT).returncode
    finally:
        seconds = time.time() - start
        with _lock:
            TIMINGS.append({"strand": strand, "command": text, "seconds": round(seconds, 1), "rc": rc})
        log(f"{strand}: rc={rc} after {seconds:.0f}s")
    if rc != 0:
        raise subprocess.CalledProcessError(rc, command)


ORIGINAL_EVALUATE = mini.evaluate


def evaluate_parallel(model_path: Path, out: Path, size: mini.Size) -> None:
    """mini.evaluate with its eval.run commands (one per benchmark, unchanged) run at once in a method's strand.

    Each writes its own samples_/nll_<benchmark>.jsonl; metrics.json is read, updated and rewritten by each at its
    end, so two finishing together could drop a key: any benchmark missing from it afterwards is run again, alone
    (it reuses its finished samples and NLLs, only the metrics are rewritten)."""
    if not getattr(_local, "parallel_eval", False):
        return ORIGINAL_EVALUATE(model_path, out, size)
    _local.capture = []
    try:
        ORIGINAL_EVALUATE(model_path, out, size)
        commands = _local.capture
    finally:
        _local.capture = None
    parent, logs = _local.strand, _local.logs

    def one(command: list[str]) -> str | None:
        bench = next(a.split("=", 1)[1] for a in command if a.startswith("benchmark="))
        return strand(f"{parent}-{bench}", logs, lambda: run_logged(command))

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        failures = [f for f in pool.map(one, commands) if f]
    if failures:
        raise RuntimeError("; ".join(failures))
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    for command in commands:
        bench = next(a.split("=", 1)[1] for a in command if a.startswith("benchmark="))
        if metrics.get(bench, {}).get("nll") is None:
            log(f"{parent}: {bench} is missing from {out / 'metrics.json'}: scoring it again, alone")
            run_logged(command)


def printing(command: list[str]) -> None:
    print(f"      $ {' '.join(command)}")


def read_selection(path: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Per method, its overrides and where they come from."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        data = {}
    chosen, source = {}, {}
    for method in mini.SIZES["full"].methods:
        overrides = (data.get(method) or {}).get("overrides")
        if overrides:
            chosen[method], source[method] = tuple(overrides), str(path)
        else:
            chosen[method] = tuple(mini.SIZES["quick"].fixed[method])
            source[method] = f"FALLBACK: the quickstart's settings ({path} has no choice for {method} yet)"
    return chosen, source


def make_size(args) -> tuple[mini.Size, dict[str, str]]:
    full = mini.SIZES["full"]
    chosen, source = read_selection(args.selection)
    overrides = [o for o in full.train_overrides if not (args.records and o.startswith("data.subset_size="))]
    if args.records:
        overrides.append(f"data.subset_size={args.records}")
    overrides += args.override
    benchmarks = full.benchmarks if args.limit is None else tuple((b, args.limit) for b, _ in full.benchmarks)
    cut = args.records is not None or args.limit is not None
    size = dataclasses.replace(
        full, fixed=chosen, train_overrides=tuple(overrides), benchmarks=benchmarks,
        output_root=full.output_root + ("_cut" if cut else ""), results_dir=full.results_dir + ("_cut" if cut else ""))
    return size, source


def converted_folder_hint() -> str:
    import yaml

    from abba.gguf_source import cache_root

    gguf = yaml.safe_load((REPO / "configs" / "model" / "smollm2_135m.yaml").read_text())["gguf"]
    return str(cache_root() / "gguf" / f"{gguf['sha256'][:16]}-{Path(gguf['file']).stem}")


def tables_command(size: mini.Size) -> list[str]:
    return [sys.executable, "-m", "abba.tables", f"results_dir={size.results_dir}",
            f"output_dir={Path(size.results_dir) / 'tables'}", "tables=mini"]


def dry_run(size: mini.Size, source: dict[str, str], jobs: list[mini.Job]) -> None:
    print(f"    gpu_mini: abba.mini size=full as 3 parallel strands; results in {size.results_dir}, run folders in "
          f"{size.output_root}")
    for method in size.methods:
        print(f"    selection {method}: {' '.join(size.fixed[method])}  ({source[method]})")
    items = ", ".join(f"{b} ({n or 'all'})" for b, n in size.benchmarks)
    print(f"    test sets: {items}; eval batch {size.eval_batch_size}; "
          f"training overrides: {' '.join(size.train_overrides)}")
    mini._run = printing
    base = Path(size.results_dir) / mini.experiment("base") / "seed0"
    state = "evaluated" if mini.evaluated(base, size) else "to evaluate"
    print(f"    strand base ({state}): the converted GGUF folder")
    mini.evaluate(Path(converted_folder_hint()), base, size)
    for job in jobs:
        print(f"    strand {job.method}: {job.describe()}; its 4 evaluations run at once")
        printing(job.command)
        printing([sys.executable, "-m", "abba.merge", f"adapter_dir={job.run_dir / 'final'}",
                  f"output_dir={job.results_dir / 'merged'}", "overwrite=true"])
        mini.evaluate(job.results_dir / "merged", job.results_dir, job.size)
    print("    then:")
    printing(tables_command(size))


def strand(name: str, logs: Path | None, work) -> str | None:
    _local.strand, _local.logs = name, logs
    try:
        work()
        return None
    except subprocess.CalledProcessError as error:
        return f"{name}: {' '.join(map(str, error.cmd))[:160]} exited {error.returncode}"
    except BaseException as error:  # noqa: BLE001: one strand's failure must not stop the others
        return f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--serial", action="store_true", help="mini.main itself (one process at a time)")
    parser.add_argument("--logs", type=Path, default=None, help="one log file per strand (default: stdout)")
    parser.add_argument("--selection", type=Path, default=REPO / mini.SIZES["cpu"].results_dir / "selection.json")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args(argv)
    size, source = make_size(args)
    mini.SIZES["full"] = size
    jobs = [j for j in mini.plan(size) if j.final]
    if args.dry_run:
        dry_run(size, source, jobs)
        return 0
    for method in size.methods:
        log(f"selection {method}: {' '.join(size.fixed[method])} ({source[method]})")
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    mini._run = run_logged
    start = time.time()
    if args.serial:
        _local.strand, _local.logs = "serial", args.logs
        failures = [] if mini.main(["size=full"]) == 0 else ["serial: abba.mini failed"]
    else:
        mini.evaluate = evaluate_parallel

        def method_work(job: mini.Job):
            def work():
                _local.parallel_eval = True
                if not job.trained:
                    mini._run(job.command)
                if not job.evaluated:
                    mini.evaluate_run(job)
            return work

        def base_work():
            _local.parallel_eval = False  # alongside the two trainings: one process at a time
            mini.evaluate_base(size)

        works = {"base": base_work, **{j.method: method_work(j) for j in jobs}}
        with ThreadPoolExecutor(max_workers=len(works)) as pool:
            futures = [pool.submit(strand, name, args.logs, work) for name, work in works.items()]
            failures = [f.result() for f in futures if f.result()]
        if not failures:
            failure = strand("tables", args.logs, lambda: mini._run(tables_command(size)))
            failures += [failure] if failure else []
    summary = {"results_dir": size.results_dir, "seconds": round(time.time() - start, 1), "failures": failures,
               "selection": {m: {"overrides": list(size.fixed[m]), "source": source[m]} for m in size.methods},
               "train_overrides": list(size.train_overrides), "timings": TIMINGS}
    Path(size.results_dir).mkdir(parents=True, exist_ok=True)
    (Path(size.results_dir) / "gpu_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"gpu_mini: {'ok' if not failures else 'FAILED: ' + '; '.join(failures)} in {summary['seconds']:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
