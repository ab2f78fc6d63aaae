"""What a table is: the one registry of the tables, their experiments and rows, their benchmarks and column labels,
and where the paper's numbers come from. Everything else (abba.tables and its table_* modules, abba.plots,
abba.reproduce, abba.mini, abba.merge_eval, eval.benchmarks) imports these from here.

- Tables: TABLE_ORDER (table1 and table2 are the paper's, PAPER_TABLES; `mini` is the CPU-sized run of Table 1's
  protocol; `other` holds runs whose config has `table: null`).
- A paper table's experiments (its rows to run) are configs/experiment/<prefix>*.yaml (`table_experiments`), each
  evaluated on its benchmark group (BENCHMARK_GROUPS, eval.run's `benchmark=<group>`).
- The paper's numbers (and a paper table's title, citation, columns, models and row order) have ONE source:
  results/paper_reference.yaml (`paper_reference()`), the one source of the paper's numbers: the experiment
  files name their table but hold no numbers (tests/test_table_registry.py).
- Column labels: BENCHMARK_LABELS; row labels: METHOD_LABELS (with METHOD_ALIASES and PAPER_BASELINE_RANK,
  abba.table_runs.method_key's rule).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .layout import REPO_ROOT

#: The paper's numbers: the only file that holds them (see the module docstring).
REFERENCE_PATH = REPO_ROOT / "results" / "paper_reference.yaml"
EXPERIMENTS_DIR = REPO_ROOT / "configs" / "experiment"

TABLE_ORDER = ("table1", "table2", "mini", "other")

#: eval.run's benchmark groups (eval.benchmarks.GROUPS); a group's order is its evaluation order.
BENCHMARK_GROUPS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("gsm8k", "math"),
    # Column order of the paper's Table 1.
    "commonsense": ("openbookqa", "ARC-Challenge", "ARC-Easy", "winogrande", "hellaswag", "piqa", "social_i_qa",
                    "boolq"),
}
BENCHMARK_LABELS = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaSwag",
                    "winogrande": "WinoGrande", "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c",
                    "openbookqa": "OBQA", "gsm8k": "GSM8K", "math": "MATH", "avg": "Avg"}
METHOD_LABELS = {"full": "Full FT", "lora": "LoRA", "rslora": "rsLoRA", "pissa": "PiSSA", "dora": "DoRA",
                 "hira": "HiRA", "loha": "LoHa", "abba": "ABBA", "lora_pro": "LoRA-Pro", "base": "Base (untuned)"}
#: peft.method values whose paper row key differs: configs/peft/lorapro.yaml is the paper's "lora_pro" row.
METHOD_ALIASES = {"lorapro": "lora_pro"}
PAPER_BASELINE_RANK = 32  # every baseline row of paper v4 Tables 1-2 uses rank 32


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: its experiment files configs/experiment/<prefix>*.yaml, evaluated on `group`."""
    name: str
    prefix: str
    group: str


PAPER_TABLES = {"table1": PaperTable("table1", "t1_", "commonsense"),
                "table2": PaperTable("table2", "t2_", "arithmetic")}

#: The mini table (abba.mini): its benchmarks in Table 1's order, the methods abba.mini trains
#: (configs/experiment/m1_smollm2_<method>.yaml), and the row order (Base, ABBA, then the baselines).
MINI_BENCHMARKS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")
MINI_METHODS = ("abba", "lora", "rslora", "pissa", "dora", "hira", "loha")
MINI_METHOD_ORDER = ("base", *MINI_METHODS, "full", "lora_pro")
MINI_TITLE = "Mini reproduction of Table 1's protocol: commonsense accuracy (%) and held-out NLL (nats/token)"


@functools.cache
def paper_reference(path: Path = REFERENCE_PATH) -> dict[str, Any]:
    """results/paper_reference.yaml, parsed (cached: do not modify the result)."""
    return yaml.safe_load(Path(path).read_text())


def table_benchmarks(name: str) -> tuple[str, ...]:
    """A table's benchmark columns: a paper table's from the paper reference, the mini table's MINI_BENCHMARKS."""
    if name == "mini":
        return MINI_BENCHMARKS
    return tuple(paper_reference()["tables"][name]["benchmarks"])


def table_experiments(name: str) -> list[str]:
    """The experiment names (configs/experiment/<prefix>*.yaml) that make up paper table `name`."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob(f"{PAPER_TABLES[name].prefix}*.yaml"))


def paper_row(table: str, model: str, method: str) -> dict[str, Any]:
    """The paper's row (label, params and a number per benchmark and avg); {} when the paper has none."""
    spec = paper_reference()["tables"].get(table, {})
    return spec.get("models", {}).get(model, {}).get("methods", {}).get(method, {})
