"""MATH's test split from the original archive of Hendrycks et al. (MATH.tar: MATH/test/<subject>/<n>.json) as
the JSONL that evaluation reads (eval/benchmarks; the layout of ../shared/data/math_eval/MATH_test.jsonl).
abba.data.download fetches the archive and calls `math_test_from_archive`."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from ..files import atomic_path

MATH_FIELDS = ("problem", "level", "type", "solution")


def math_test_from_archive(archive: Path, out: Path) -> int:
    """MATH's test split (MATH/test/<subject>/<n>.json in the archive) as JSONL: one record per file,
    {"unique_id": "test/<subject>/<n>.json", problem, level, type, solution}, sorted by subject and number,
    non-ASCII kept (the layout of ../shared/data/math_eval/MATH_test.jsonl). Returns the number of records."""
    records = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-1].endswith(".json")
                    and not parts[-1].startswith(".")):
                continue
            subject, number = parts[-2], parts[-1][: -len(".json")]
            data = json.load(tar.extractfile(member))
            record = {"unique_id": f"test/{subject}/{number}.json", **{k: data[k] for k in MATH_FIELDS}}
            records.append(((subject, int(number)), record))
    if not records:
        raise ValueError("no test/<subject>/<n>.json files in it")
    records.sort(key=lambda pair: pair[0])
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in records)
    with atomic_path(out) as tmp:  # UTF-8 whatever the locale: the pinned digest is of these bytes
        tmp.write_bytes(text.encode("utf-8"))
    return len(records)
