"""The benchmark registry: `BENCHMARKS[name]`, and `resolve("arithmetic")` -> ["gsm8k", "math"].

    from eval.benchmarks import BENCHMARKS, load_items
    items = load_items(BENCHMARKS["gsm8k"], data_dir="../shared/data")
    items = load_items(BENCHMARKS["gsm8k"], "../shared/data", limit=200, subset="random", seed=0)  # same 200 for all
"""

from __future__ import annotations

import random
from pathlib import Path

from abba.table_registry import BENCHMARK_GROUPS

from .base import Benchmark, DataMissingError, Decoding, Item, load_records
from .commonsense import COMMONSENSE
from .competition_math import MATH
from .gsm8k import GSM8K

BENCHMARKS: dict[str, Benchmark] = {"gsm8k": GSM8K, "math": MATH, **COMMONSENSE}
#: The benchmark groups (eval.run benchmark=<group>) are defined with the tables, in abba.table_registry.
GROUPS: dict[str, tuple[str, ...]] = BENCHMARK_GROUPS


def resolve(name) -> list[str]:
    """Benchmark names for a benchmark, a group, or a list of them (`[gsm8k,boolq]` or "gsm8k,boolq")."""
    parts = [str(p) for p in name] if isinstance(name, (list, tuple)) or hasattr(name, "_iter_ex") else str(name).split(",")
    names: list[str] = []
    for part in parts:
        part = part.strip()
        if part in GROUPS:
            names.extend(GROUPS[part])
        elif part in BENCHMARKS:
            names.append(part)
        else:
            raise ValueError(f"unknown benchmark {part!r}; choose from {sorted(BENCHMARKS)} or groups {sorted(GROUPS)}")
    return list(dict.fromkeys(names))


SUBSETS = ("first", "random")


def subset_indices(n_records: int, limit: int | None, subset: str = "first", seed: int = 0) -> list[int]:
    """Positions of the items to evaluate: all when `limit` is None or >= n_records; else the first `limit`
    ('first') or a `seed`ed random sample of `limit` of them in file order ('random': the same for every model)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}: use {' or '.join(SUBSETS)}")
    if limit is None or int(limit) >= n_records:
        return list(range(n_records))
    if int(limit) < 0:
        raise ValueError(f"limit={limit} is negative")
    if subset == "first":
        return list(range(int(limit)))
    return sorted(random.Random(int(seed)).sample(range(n_records), int(limit)))


def load_items(bench: Benchmark, data_dir: str | Path, data_file: str | Path | None = None,
               limit: int | None = None, subset: str = "first", seed: int = 0, references: bool = False) -> list[Item]:
    """`limit` items (all when None; all when the file has fewer) as (id, prompt, gold), chosen by
    `subset_indices`; ids are positions in the file (or the benchmark's own ids), whichever subset is taken.
    `references=True` also fills in each item's reference response (Benchmark.reference; eval.run nll=true)."""
    records = load_records(bench, data_dir, data_file)
    indices = subset_indices(len(records), limit, subset, seed)
    return bench.items([records[i] for i in indices], indices, references)


__all__ = ["BENCHMARKS", "GROUPS", "SUBSETS", "Benchmark", "DataMissingError", "Decoding", "Item", "load_items",
           "resolve", "subset_indices"]
