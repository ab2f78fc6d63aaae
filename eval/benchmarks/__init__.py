"""The benchmark registry: `BENCHMARKS[name]`, and `resolve("arithmetic")` -> ["gsm8k", "math"].

    from eval.benchmarks import BENCHMARKS, load_items
    items = load_items(BENCHMARKS["gsm8k"], data_dir="../shared/data")
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, DataMissingError, Decoding, Item, load_records
from .commonsense import COMMONSENSE
from .competition_math import MATH
from .gsm8k import GSM8K

BENCHMARKS: dict[str, Benchmark] = {"gsm8k": GSM8K, "math": MATH, **COMMONSENSE}
GROUPS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("gsm8k", "math"),
    # Column order of the paper's Table 1.
    "commonsense": ("openbookqa", "ARC-Challenge", "ARC-Easy", "winogrande", "hellaswag", "piqa", "social_i_qa",
                    "boolq"),
}


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


def load_items(bench: Benchmark, data_dir: str | Path, data_file: str | Path | None = None,
               limit: int | None = None) -> list[Item]:
    """The first `limit` items (all when None) as (id, prompt, gold)."""
    records = load_records(bench, data_dir, data_file)
    if limit is not None:
        records = records[: int(limit)]
    return bench.items(records)


__all__ = ["BENCHMARKS", "GROUPS", "Benchmark", "DataMissingError", "Decoding", "Item", "load_items", "resolve"]
