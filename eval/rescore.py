"""Re-score saved generations without a model (e.g. after a scoring fix, or with another option).

    python -m eval.rescore benchmark=math input=OUT/samples_math.jsonl output=/tmp/rescored.jsonl
    python -m eval.rescore benchmark=math input=... output=... math_exception_correct=true

Reads JSONL records with `completion` and `gold`, writes them with `prediction` and `correct` (and the scorer's
extra fields) recomputed, and prints `accuracy=<value>` as its last line. Scoring options: gsm8k_round_prediction,
math_exception_correct (true/false), math_timeout_s (seconds > 0); defaults from configs/eval.yaml. A bad command
line (`benchmark=gsm8kk`, an argument that is not key=value, an unknown, missing or mistyped option) exits 2; a
missing or unreadable input, a samples file of another benchmark, or a record whose gold the scorer cannot read
exits 1; each with one line (abba/cli.py), and no output is written then.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from abba.cli import Refusal, UsageError, first_line, one_line_errors, parse_bool, parse_key_values
from abba.files import write_jsonl

from .benchmarks import BENCHMARKS
from .checks import benchmark_names
from .run import load_config
from .scoring import SCORING_OPTIONS, score_record, scoring_options

USAGE = "usage: python -m eval.rescore benchmark=NAME input=FILE output=FILE2 [scoring options]"


def default_options() -> dict:
    """The scoring options' defaults, from configs/eval.yaml."""
    return scoring_options(load_config())


def rescore(benchmark: str, input_path: str | Path, output_path: str | Path, **options) -> float:
    names = benchmark_names(benchmark)  # UsageError (a ValueError) with close matches for a misspelt name
    if len(names) != 1 or names[0] != benchmark:
        raise UsageError(f"benchmark={benchmark}: rescore one benchmark at a time (the one the samples file is of)")
    numbered = _read_records(Path(input_path))
    records = list(numbered.values())
    _check_benchmark(Path(input_path), records, benchmark)
    options = {**default_options(), **options}
    scorer = BENCHMARKS[benchmark].make_scorer(options)
    rescored = []
    try:
        for number, record in numbered.items():
            try:
                rescored.append(score_record(scorer, record, options))
            except (ValueError, TypeError) as error:  # a gold the scorer cannot read, e.g. GSM8K's "#### 4"
                raise Refusal(f"input={input_path} line {number}: {first_line(error)}: pass a "
                              f"samples file that eval.run wrote for benchmark={benchmark}") from None
    finally:
        scorer.close()
    write_jsonl(output_path, rescored)
    return sum(bool(r["correct"]) for r in rescored) / len(rescored) if rescored else 0.0


def _check_benchmark(path: Path, records: list[dict], benchmark: str) -> None:
    """Refuse a samples file of another benchmark: its records' `benchmark` (eval.run writes it), or for a file
    from before that field, the name eval.run gave it (samples_<benchmark>.jsonl). Scoring GSM8K completions as
    MATH would print a meaningless accuracy."""
    named = sorted({str(r["benchmark"]) for r in records if r.get("benchmark")})
    match = re.fullmatch(r"samples_(.+)\.jsonl", path.name)
    source = named or ([match[1]] if match and match[1] in BENCHMARKS else [])
    if source and source != [benchmark]:
        how = "its records say" if named else "its name says"
        raise Refusal(f"input={path} holds samples of {', '.join(source)} ({how} so), not {benchmark}: pass "
                      f"benchmark={source[0]}" if len(source) == 1 else f"input={path} mixes samples of "
                      f"{', '.join(source)}: rescore one benchmark's file at a time")


def _read_records(path: Path) -> dict[int, dict]:
    """The samples file's records by line number (from 1), read line by line (not abba.files.read_jsonl) so that
    a refusal names the line."""
    if not path.is_file():
        raise Refusal(f"input={path} {'is a folder' if path.is_dir() else 'does not exist'}: pass a samples file "
                      f"that eval.run wrote (OUT/samples_<benchmark>.jsonl)")
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise Refusal(f"input={path} line {number} is not JSON: pass a samples file that eval.run wrote") from None
        if not isinstance(record, dict) or "completion" not in record or "gold" not in record:
            raise Refusal(f"input={path} line {number} has no completion and gold: pass a samples file that "
                          f"eval.run wrote")
        records[number] = record
    return records


def _option(key: str, value: str) -> bool | int | float:
    """A scoring option typed as configs/eval.yaml has it; UsageError naming the key otherwise."""
    if key != "math_timeout_s":
        return parse_bool(key, value)
    try:
        seconds = int(value) if value.strip().isdigit() else float(value)
    except ValueError:
        seconds = -1
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{key}={value}: expected a positive number of seconds")
    return seconds


def _main(argv: list[str]) -> None:
    args = parse_key_values(argv, dict.fromkeys(("benchmark", "input", "output", *SCORING_OPTIONS)), USAGE)
    missing = [k for k in ("benchmark", "input", "output") if args.get(k) in (None, "")]
    if missing:
        raise UsageError(f"missing {' '.join(k + '=' for k in missing)}; {USAGE}")
    options = {k: _option(k, args[k]) for k in SCORING_OPTIONS if args[k] is not None}
    accuracy = rescore(str(args["benchmark"]), args["input"], args["output"], **options)
    print(f"accuracy={accuracy}")


def main(argv: list[str]) -> None:
    with one_line_errors(on_interrupt="interrupted: nothing was written (the output is written whole at the end): "
                                      "run the same command again"):
        _main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
