"""Re-score saved generations without a model (e.g. after a scoring fix, or with another option).

    python -m eval.rescore benchmark=math input=OUT/samples_math.jsonl output=/tmp/rescored.jsonl
    python -m eval.rescore benchmark=math input=... output=... math_exception_correct=true

Reads JSONL records with `completion` and `gold`, writes them with `prediction` and `correct` (and the scorer's
extra fields) recomputed, and prints `accuracy=<value>` as its last line. A bad command line (`benchmark=gsm8kk`, an
unknown or missing option) exits 2, a missing or unreadable input, or a samples file of another benchmark, 1, each
with one line (abba/cli.py); no output is written then.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from abba.cli import Refusal, UsageError, one_line_errors, unknown_options
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
    records = _read_records(Path(input_path))
    _check_benchmark(Path(input_path), records, benchmark)
    options = {**default_options(), **options}
    scorer = BENCHMARKS[benchmark].make_scorer(options)
    try:
        rescored = [score_record(scorer, record, options) for record in records]
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


def _read_records(path: Path) -> list[dict]:
    """The samples file's records, line by line (not abba.files.read_jsonl) so that a refusal names the line."""
    if not path.is_file():
        raise Refusal(f"input={path} {'is a folder' if path.is_dir() else 'does not exist'}: pass a samples file "
                      f"that eval.run wrote (OUT/samples_<benchmark>.jsonl)")
    records = []
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
        records.append(record)
    return records


def _main(argv: list[str]) -> None:
    try:
        args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    except Exception as error:  # noqa: BLE001 - a malformed key=value: say which, in one line
        raise UsageError(f"{str(error).splitlines()[0]}; {USAGE}") from None
    unknown_options(args, ("benchmark", "input", "output", *SCORING_OPTIONS), USAGE)
    missing = [k for k in ("benchmark", "input", "output") if args.get(k) in (None, "")]
    if missing:
        raise UsageError(f"missing {' '.join(k + '=' for k in missing)}; {USAGE}")
    options = {k: args[k] for k in SCORING_OPTIONS if k in args}
    accuracy = rescore(str(args["benchmark"]), args["input"], args["output"], **options)
    print(f"accuracy={accuracy}")


def main(argv: list[str]) -> None:
    with one_line_errors(on_interrupt="interrupted: nothing was written (the output is written whole at the end): "
                                      "run the same command again"):
        _main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
