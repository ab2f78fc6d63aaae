"""Atomic writes and JSONL: the one place the project writes a file or folder that a crash must not leave half-done.

Every writer goes through `atomic_path` (a temporary sibling, renamed onto the target when the block succeeds,
removed when it fails), so a reader sees the old file, the new file, or none, never a torn one. JSONL is one JSON
object per line (the samples, metrics and training-split files); `read_jsonl` skips blank lines.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to: a file (`folder=False`) or a folder created empty for the block
    (`folder=True`). On success it replaces `path` (a folder already at `path` is removed first; `os.replace` is
    atomic for files, and a folder's rename is atomic once the old one is gone); on failure it is removed.

    The temporary file is created by whoever writes it, with a plain open(), so it gets the umask's mode (0644
    under umask 022), not mkstemp's 0600. Raises whatever the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON with sorted keys and a final newline, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    """JSONL text: one `json.dumps(record)` per line, each ending in a newline ("" for no records)."""
    return "".join(json.dumps(record) + "\n" for record in records)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write `records` as JSONL atomically (replaces the file)."""
    write_text(path, jsonl_text(records))


def append_jsonl(handle, records: Iterable[dict[str, Any]]) -> None:
    """Append `records` to an open text file and flush, so a crash loses at most the record being written."""
    handle.write(jsonl_text(records))
    handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, blank lines skipped. Raises FileNotFoundError, json.JSONDecodeError."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
