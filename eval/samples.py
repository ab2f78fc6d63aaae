"""samples_<benchmark>.jsonl: one scored record per line, appended and fsynced batch by batch, so a killed
evaluation loses at most the batch in flight and a re-run picks up where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path

from abba.files import append_jsonl, write_jsonl


def read_samples(path: Path) -> dict[str, dict]:
    """Records by id. A torn last line (a kill mid-write) is dropped and the file rewritten without it; any
    other line that is not JSON raises ValueError. (Not abba.files.read_jsonl: that one has no torn-line rule.)"""
    if not path.is_file():
        return {}
    records: dict[str, dict] = {}
    lines = [line + "\n" for line in path.read_text().split("\n")]
    lines[-1] = lines[-1][:-1]  # the text after the last newline ('' when the file ends cleanly)
    if not lines[-1]:
        lines.pop()
    torn = False
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path} line {number + 1} is not JSON: fix or delete the file") from None
            torn = True
            continue
        if not line.endswith("\n"):
            torn = True  # complete JSON but no newline: rewrite so the next append starts on a new line
        records[str(record["id"])] = record
    if torn:
        write_jsonl(path, records.values())
    return records


class SampleWriter:
    """Append records to a JSONL file; each call ends with flush + fsync."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a")

    def append(self, records: list[dict]) -> None:
        append_jsonl(self._file, records)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
