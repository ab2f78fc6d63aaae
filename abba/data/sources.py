"""Read training records (MetaMathQA, Commonsense170K, GSM8K-style files) into one schema:
{"instruction", "input", "output"}.

Every source is checked *before* any model is loaded: a missing file raises `DataError` with one line that
names the path and says how to obtain the data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ..layout import resolve_path
from .templates import ANSWER_MARKER

FORMATS = ("metamathqa", "commonsense", "gsm8k")

# What to do about a missing file: `bash scripts/get_data.sh` (abba/data/download.py) fetches every one of them
# into paths.data_dir (env ABBA_DATA_DIR, default ../shared/data).
HOW_TO_GET = {
    "metamathqa": "run `bash scripts/get_data.sh only=metamathqa` (math_train/MetaMathQA-395K.json under "
    "paths.data_dir) and pass data.path=..., or set data.path=null to load meta-math/MetaMathQA from the Hub",
    "commonsense": "run `bash scripts/get_data.sh only=training` (commonsense_170k.json and the commonsense_train/ "
    "splits under paths.data_dir, env ABBA_DATA_DIR), or pass data.path=...",
    "gsm8k": "run `bash scripts/get_data.sh only=gsm8k_train` (math_train/gsm8k_train.jsonl under paths.data_dir, "
    "env ABBA_DATA_DIR), or pass data.path=... (GSM8K-style question/answer JSONL)",
}


class DataError(ValueError):
    """A training data set cannot be found or read; the message is one line."""


def _paths(data_cfg: Mapping[str, Any]) -> list[str]:
    path = data_cfg.get("path")
    if path is None:
        return []
    return [resolve_path(p) for p in ([path] if isinstance(path, str) else list(path))]


def check_data_source(data_cfg: Mapping[str, Any]) -> None:
    """Fail early (no model loaded yet) when the configured data cannot exist."""
    fmt = data_cfg.get("format")
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r} (data.format); known formats: {', '.join(FORMATS)}")
    paths = _paths(data_cfg)
    if not paths and not data_cfg.get("hub_id"):
        raise DataError(f"data set {data_cfg.get('name')!r} has neither data.path nor data.hub_id; {HOW_TO_GET[fmt]}")
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"training data file not found: {p}; {HOW_TO_GET[fmt]}")


_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_to_metamath(question: str, answer: str) -> dict[str, str]:
    """A GSM8K record in MetaMathQA's form: calculator annotations dropped, '#### n' -> 'The answer is: n'
    (MetaMathQA's GSM responses end that way, which is what the evaluation's answer extraction expects)."""
    body, _, final = answer.rpartition("####")
    if not _:
        raise DataError(f"GSM8K answer without '#### <number>': {answer[-60:]!r}")
    solution = _CALC.sub("", body).strip()
    return {"instruction": question, "input": "", "output": f"{solution}\n{ANSWER_MARKER}{final.strip()}"}


def _to_schema(fmt: str, record: Mapping[str, Any]) -> dict[str, str]:
    if fmt == "metamathqa":
        return {"instruction": record["query"], "input": "", "output": record["response"]}
    if fmt == "gsm8k":
        return gsm8k_to_metamath(record["question"], record["answer"])
    return {"instruction": record["instruction"], "input": record.get("input") or "", "output": record["output"]}


def _read(data_cfg: Mapping[str, Any]):
    """The whole data set in the order its subsets are drawn from: file order, or a seeded shuffle."""
    import datasets

    check_data_source(data_cfg)
    fmt = data_cfg["format"]
    paths = _paths(data_cfg)
    try:
        if paths:
            ds = datasets.load_dataset("json", data_files=paths, split="train")
        else:
            ds = datasets.load_dataset(data_cfg["hub_id"], split=data_cfg.get("split", "train"))
    except Exception as exc:  # the Hub offline, a corrupt file: one line naming the source
        source = paths or data_cfg.get("hub_id")
        raise DataError(f"could not read training data {source}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        f"{HOW_TO_GET[fmt]}") from None
    if data_cfg.get("subset_mode", "first") == "random" and data_cfg.get("subset_size") is not None:
        ds = ds.shuffle(seed=int(data_cfg.get("subset_seed", 0)))
    return ds


def _formatted(ds, data_cfg: Mapping[str, Any], what: str):
    fmt = data_cfg["format"]
    return ds.map(lambda r: _to_schema(fmt, r), remove_columns=ds.column_names,
                  desc=f"formatting {data_cfg.get('name')}{what}")


def load_records(data_cfg: Mapping[str, Any]):
    """A `datasets.Dataset` with columns instruction/input/output, subset as configured.

    subset_mode 'first' takes the first `subset_size` rows (what the official code does with 50K MetaMathQA
    rows; the paper's "20K subset" does not say how it was drawn), 'random' a seeded random sample.
    """
    ds = _read(data_cfg)
    size = data_cfg.get("subset_size")
    if size is not None and size < len(ds):
        ds = ds.select(range(int(size)))
    return _formatted(ds, data_cfg, "")


def load_heldout_records(data_cfg: Mapping[str, Any]):
    """`data.heldout_size` training records that the run never trains on: the rows right after the training
    subset in the order it is drawn from (so disjoint from it by construction, and the same for every method and
    seed). Used to choose hyperparameters without touching a test set. Raises DataError when none are left."""
    size, heldout = data_cfg.get("subset_size"), int(data_cfg.get("heldout_size") or 0)
    ds = _read(data_cfg)
    if size is None or int(size) + heldout > len(ds):
        raise DataError(f"data.heldout_size={heldout} needs data.subset_size + heldout_size <= {len(ds)} records "
                        f"(subset_size={size}): the held-out rows must lie outside the training subset")
    return _formatted(ds.select(range(int(size), int(size) + heldout)), data_cfg, " (held out)")
