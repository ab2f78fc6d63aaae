"""MATH test (5000 problems, Hendrycks et al.), MetaMath/ABBA protocol: greedy, 512 new tokens; gold = the
solution's last \\boxed{...}; normalization + symbolic check (eval.scoring.math_scorer)."""

from ..scoring.math_normalize import last_boxed
from ..scoring.math_scorer import MathScorer
from .base import ARITHMETIC_PROMPT, ARITHMETIC_STOP, Benchmark, Decoding, HubSource

SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")


def _gold(record: dict) -> str:
    answer = last_boxed(record["solution"])
    if answer is None:
        raise ValueError(f"MATH solution without \\boxed{{...}}: {record.get('unique_id', record['problem'][:60])}")
    return answer


MATH = Benchmark(
    name="math",
    local_file="math_eval/MATH_test.jsonl",
    file_format="jsonl",
    download_hint="the 5000-problem MATH test split as JSONL with fields problem/solution (Hub "
                  "EleutherAI/hendrycks_math, all seven subjects, or MetaMath's data/test/MATH_test.jsonl)",
    hub=HubSource("EleutherAI/hendrycks_math", SUBJECTS, "test"),
    prompt=lambda r: ARITHMETIC_PROMPT.format(question=r["problem"]),
    gold=_gold,
    item_id=lambda r, i: r.get("unique_id") or str(i),
    decoding=Decoding(max_new_tokens=512),
    stop=ARITHMETIC_STOP,
    make_scorer=lambda cfg: MathScorer(exception_correct=bool(cfg.get("math_exception_correct", False)),
                                       timeout_s=float(cfg.get("math_timeout_s", 5.0))),
)
