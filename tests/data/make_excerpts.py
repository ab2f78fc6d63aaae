"""Cut the excerpts in tests/data/ from the real data files (the layout of ABBA_DATA_DIR), deterministically.

    python tests/data/make_excerpts.py                                     # ../shared/data -> tests/data
    python tests/data/make_excerpts.py data_dir=/data/abba out_dir=/tmp/x  # elsewhere (tests compare the bytes)

Which records (by position in the full file; the same every time, no randomness):
* math_eval/gsm8k_test.jsonl: the first 24 (tests evaluate `limit=20` and compare with the file's first 20);
* math_train/gsm8k_train.jsonl: the first 480, what smoke_arithmetic / smoke_lorapro train on (subset_size 480,
  subset_mode first), so the smoke runs see exactly what they see on the full file;
* math_eval/MATH_test.jsonl: in each of the seven subjects, the first problem of each level 1-5 (35 problems);
* commonsense/<name>/test.json and commonsense_train/<name>/train.json: the first 24; ARC-Easy's test set also
  records 93, 1074 and 1441, the ones tests/test_hub_commonsense.py types out as ai2_arc records.

JSONL lines are copied byte for byte; JSON lists are written as their source is (4-space indent, with or without
ASCII escapes, no final newline). `excerpts.json` records, for each file, the positions taken and the digests of
the source and of the excerpt. Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMONSENSE_TEST = ("ARC-Challenge", "ARC-Easy", "boolq", "hellaswag", "openbookqa", "piqa", "social_i_qa",
                    "winogrande")
COMMONSENSE_TRAIN = ("ARC-Challenge", "ARC-Easy", "boolq", "openbookqa")
FIRST = 24
HUB_TEST_RECORDS = (93, 1074, 1441)  # tests/test_hub_commonsense.py HAND_BUILT (index 0 is among the first 24)


def _math_positions(lines: list[str]) -> list[int]:
    seen, positions = set(), []
    for i, line in enumerate(lines):
        record = json.loads(line)
        key = (record["type"], record["level"])
        if key not in seen:
            seen.add(key)
            positions.append(i)
    return positions


def plan(data_dir: Path) -> dict[str, list[int]]:
    """{path under the data folder: positions of the records to keep, in file order}."""
    def lines(rel):
        return (data_dir / rel).read_text(encoding="utf-8").splitlines()

    positions = {
        "math_eval/gsm8k_test.jsonl": list(range(FIRST)),
        "math_train/gsm8k_train.jsonl": list(range(480)),
        "math_eval/MATH_test.jsonl": _math_positions(lines("math_eval/MATH_test.jsonl")),
    }
    for name in COMMONSENSE_TEST:
        extra = HUB_TEST_RECORDS if name == "ARC-Easy" else ()
        positions[f"commonsense/{name}/test.json"] = sorted({*range(FIRST), *extra})
    for name in COMMONSENSE_TRAIN:
        positions[f"commonsense_train/{name}/train.json"] = list(range(FIRST))
    return positions


def _json_list(raw: str, records: list) -> str:
    """`records` written the way `raw` (a JSON list) is written."""
    data = json.loads(raw)
    for ascii_only in (True, False):
        if json.dumps(data, indent=4, ensure_ascii=ascii_only) == raw:
            return json.dumps(records, indent=4, ensure_ascii=ascii_only)
    raise ValueError("not written as json.dumps(indent=4): add its format to make_excerpts.py")


def cut(data_dir: Path, out_dir: Path) -> dict:
    index = {}
    for rel, keep in plan(data_dir).items():
        raw = (data_dir / rel).read_text(encoding="utf-8")
        if rel.endswith(".jsonl"):
            lines = raw.splitlines(keepends=True)
            text = "".join(lines[i] for i in keep)
        else:
            records = json.loads(raw)
            text = _json_list(raw, [records[i] for i in keep])
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
        index[rel] = {"records": len(keep), "positions": keep,
                      "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                      "source_sha256": hashlib.sha256(raw.encode("utf-8")).hexdigest()}
    lines = [f"  {json.dumps(rel)}: {json.dumps(entry)}" for rel, entry in index.items()]  # one file a line
    (out_dir / "excerpts.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return index


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if set(args) - {"data_dir", "out_dir"} or len(args) != len(argv):
        print("error: bad arguments; usage: python tests/data/make_excerpts.py [data_dir=DIR] [out_dir=DIR]",
              file=sys.stderr)
        return 2
    data_dir = Path(args.get("data_dir", HERE.parents[2] / "shared" / "data"))
    index = cut(data_dir, Path(args.get("out_dir", HERE)))
    total = sum((Path(args.get("out_dir", HERE)) / rel).stat().st_size for rel in index)
    print(f"{len(index)} excerpts, {sum(e['records'] for e in index.values())} records, {total:,} bytes "
          f"from {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
