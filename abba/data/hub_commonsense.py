"""ARC-Easy's train and test splits in the LLM-Adapters record format, from local files or the Hugging Face Hub.

    python -m abba.data.hub_commonsense out_dir=outputs/quickstart/data     # prints the folder it used

Writes the layout of `paths.data_dir`, so that `ABBA_DATA_DIR=<out_dir>` points training and evaluation at it:

    <out_dir>/commonsense_train/ARC-Easy/train.json     2,251 records (Commonsense170K's ARC-Easy part)
    <out_dir>/commonsense/ARC-Easy/test.json            2,376 records (eval benchmark ARC-Easy)

Each a JSON list of {"instruction", "input", "output", "answer"}, byte for byte as the LLM-Adapters files
(4-space indent, ASCII escapes, no final newline), e.g.

    {"instruction": "Please choose the correct answer to the question: <question>\\n\\nAnswer1: <choice> Answer2: ...
                     \\n\\nAnswer format: answer1/answer2/...",
     "input": "", "output": "the correct answer is answer2", "answer": "answer2"}

where answerN numbers the choices in their order (whatever their labels: A-E or 1-5).

Sources, in order:
1. the same two files under `data_dir=` (default $ABBA_DATA_DIR, else ../shared/data as configs/paths/default.yaml),
   copied when both exist;
2. the Hugging Face Hub: the AI2 Reasoning Challenge (ARC) data set, Easy set (Clark et al., 2018, "Think you have
   Solved Question Answering? Try ARC"; `datasets.load_dataset("allenai/ai2_arc", "ARC-Easy")`, licence CC BY-SA
   4.0), splits train and test, converted record by record (`convert`). Honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE
   and the datasets cache.

When neither works: one line on stderr naming both sources, exit status 1. Files are written under a temporary name
and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

from ..cli import UsageError, one_line_errors, parse_key_values
from ..files import atomic_path, write_text

HUB_ID = "allenai/ai2_arc"
HUB_CONFIG = "ARC-Easy"
#: split -> the file's path under a data folder (the layout of configs/data/*_local.yaml and eval/benchmarks)
FILES = {"train": "commonsense_train/ARC-Easy/train.json", "test": "commonsense/ARC-Easy/test.json"}
QUESTION_PREFIX = "Please choose the correct answer to the question: "


class SourceError(RuntimeError):
    """Neither the local files nor the Hub gave the data; the message is one line."""


def convert(record: Mapping[str, Any]) -> dict[str, str]:
    """One ai2_arc record (question, choices {text, label}, answerKey) as an LLM-Adapters commonsense record."""
    texts = list(record["choices"]["text"])
    labels = [str(label) for label in record["choices"]["label"]]
    key = str(record["answerKey"])
    if key not in labels or len(labels) != len(texts) or not texts:
        raise ValueError(f"ARC record {record.get('id', '?')}: answerKey {key!r} is not one of the choice labels "
                         f"{labels}")
    choices = " ".join(f"Answer{i}: {text}" for i, text in enumerate(texts, 1))
    formats = "/".join(f"answer{i}" for i in range(1, len(texts) + 1))
    answer = f"answer{labels.index(key) + 1}"
    return {"instruction": f"{QUESTION_PREFIX}{record['question']}\n\n{choices}\n\nAnswer format: {formats}",
            "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def dumps(records: list[dict[str, str]]) -> str:
    """The LLM-Adapters files' JSON text (json.dump(indent=4), ASCII escapes, no final newline)."""
    return json.dumps(records, indent=4)


def default_data_dir() -> Path:
    return Path(os.environ.get("ABBA_DATA_DIR") or "../shared/data")


def copy_local(data_dir: Path, out_dir: Path) -> bool:
    """Copy both files from `data_dir` (True), or do nothing when either is missing (False)."""
    sources = {split: data_dir / rel for split, rel in FILES.items()}
    if not all(p.is_file() for p in sources.values()):
        return False
    for split, source in sources.items():
        target = out_dir / FILES[split]
        if target.exists() and target.resolve() == source.resolve():
            continue  # out_dir is the data folder itself
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return True


def download(out_dir: Path) -> None:
    """Both splits from the Hub, converted; raises whatever datasets raises when it cannot."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    converted = {}
    for split in FILES:  # both loaded before anything is written: no half-updated folder
        converted[split] = [convert(r) for r in datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)]
    for split, records in converted.items():
        write_text(out_dir / FILES[split], dumps(records))


def materialise(out_dir: Path, data_dir: Path | None = None) -> str:
    """ARC-Easy train/test under `out_dir`; returns where they came from ('local <dir>' or 'hub <id>')."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    if copy_local(data_dir, out_dir):
        return f"local {data_dir}"
    try:
        download(out_dir)
    except Exception as exc:  # offline, no cache, a changed data set: one line naming both sources
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SourceError(f"ARC-Easy not available: no {FILES['train']} and {FILES['test']} under {data_dir} "
                          f"(data_dir=, env ABBA_DATA_DIR), and the Hugging Face Hub ({HUB_ID}, {HUB_CONFIG}) "
                          f"failed: {type(exc).__name__}: {detail}") from None
    return f"hub {HUB_ID} {HUB_CONFIG}"


USAGE = "usage: python -m abba.data.hub_commonsense out_dir=DIR [data_dir=DIR]"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0; 2 for a bad command line, 1 when neither source works),
    after one `error:` line on stderr (abba/cli.py), so scripts/quickstart.sh and the tests can call it."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        with one_line_errors(refusals=(SourceError,)):
            keys = {"out_dir": "", "data_dir": ""}
            try:
                args = parse_key_values(argv, keys, USAGE)
                reason = "" if args["out_dir"] else "missing out_dir="
            except UsageError as error:  # its reason (unknown key with close matches, not key=value), once
                reason = str(error).removesuffix(f"; {USAGE}")
            if reason:
                raise UsageError(f"bad arguments {' '.join(argv) or '(none)'}; {USAGE}; {reason}")
            out_dir = Path(args["out_dir"])
            source = materialise(out_dir, Path(args["data_dir"]) if args["data_dir"] else None)
    except SystemExit as stop:  # one_line_errors printed the line
        return int(stop.code)
    print(f"ARC-Easy train/test from {source} -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
