"""Re-score saved generations without a model (e.g. after a scoring fix, or with another option).

    python -m eval.rescore benchmark=math input=OUT/samples_math.jsonl output=/tmp/rescored.jsonl
    python -m eval.rescore benchmark=math input=... output=... math_exception_correct=true

Reads JSONL records with `completion` and `gold`, writes them with `prediction` and `correct` (and the scorer's
extra fields) recomputed, and prints `accuracy=<value>` as its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from abba.run_folder import write_atomic

from .benchmarks import BENCHMARKS
from .run import SCORING_OPTIONS, load_config, score_record


def default_options() -> dict:
    """The scoring options' defaults, from configs/eval.yaml."""
    cfg = load_config()
    return {k: cfg[k] for k in SCORING_OPTIONS}


def rescore(benchmark: str, input_path: str | Path, output_path: str | Path, **options) -> float:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    records = [json.loads(line) for line in Path(input_path).read_text().splitlines() if line.strip()]
    options = {**default_options(), **options}
    scorer = BENCHMARKS[benchmark].make_scorer(options)
    try:
        rescored = [score_record(scorer, record, options) for record in records]
    finally:
        scorer.close()
    write_atomic(Path(output_path), "".join(json.dumps(r) + "\n" for r in rescored))
    return sum(bool(r["correct"]) for r in rescored) / len(rescored) if rescored else 0.0


def main(argv: list[str]) -> None:
    args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    missing = [k for k in ("benchmark", "input", "output") if k not in args]
    if missing:
        sys.exit(f"eval.rescore: missing {', '.join(k + '=' for k in missing)} "
                 "(usage: python -m eval.rescore benchmark=NAME input=FILE output=FILE2)")
    unknown = sorted(set(args) - {"benchmark", "input", "output"} - set(SCORING_OPTIONS))
    if unknown:
        sys.exit(f"eval.rescore: unknown option(s) {unknown}; known: {sorted(SCORING_OPTIONS)}")
    options = {k: args[k] for k in SCORING_OPTIONS if k in args}
    accuracy = rescore(str(args["benchmark"]), args["input"], args["output"], **options)
    print(f"accuracy={accuracy}")


if __name__ == "__main__":
    main(sys.argv[1:])
