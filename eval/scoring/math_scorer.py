"""MATH: the answer after the last "The answer is: " against the gold's last \\boxed{...}.

A pair is correct when the strings are identical, or identical after the normalization
(`math_normalize.normalize`: the Hendrycks MATH normalization, narrowed to steps that only remove formatting),
or both normalized strings are plain numbers that agree (to 6 decimals, as math-verify rounds), or math-verify
(https://github.com/huggingface/Math-Verify) proves them equivalent: first the normalized strings, then, if that
fails, the raw ones (only their unbraced \\frac/\\sqrt arguments braced, see `math_normalize.brace_arguments`),
so an answer the normalization cannot handle is still recovered. Both symbolic checks share one `timeout_s`
per pair (a timeout is wrong).

When the reference normalization would raise, only the raw symbolic check can make the pair correct, unless
`exception_correct=True`, which reproduces the official grader (FACTS.md "official code" item 8: such a pair is
correct); `summary` reports the accuracy under both rules.
"""

from __future__ import annotations

import time
from fractions import Fraction

from .math_normalize import NormalizationError, brace_arguments, extract_prediction, normalize
from .symbolic import SymbolicChecker


def _plain_number(s: str) -> Fraction | None:
    """'-3', '0.25', '\\frac{3}{4}', '-\\frac{1}{2}' -> Fraction; anything else -> None."""
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    if s.startswith("\\frac{") and s.endswith("}") and s.count("{") == 2:
        num, _, den = s[len("\\frac{"):-1].partition("}{")
        value = _plain_number(num), _plain_number(den)
        return sign * value[0] / value[1] if None not in value and value[1] != 0 else None
    if not s or not all(c.isdigit() or c == "." for c in s) or s.count(".") > 1 or s == ".":
        return None
    return sign * Fraction(s)


class MathScorer:
    def __init__(self, exception_correct: bool = False, timeout_s: float = 5.0):
        self.exception_correct = exception_correct
        self.checker = SymbolicChecker(timeout_s)

    def compare(self, pred: str, gold: str) -> dict:
        """{'correct', 'match' (how it was decided), 'normalization_error', 'timed_out'} for two answer strings.

        `match` is None when nothing proved the pair equal (with `exception_correct`, a normalization error is
        then correct with match None).
        """
        result = {"correct": False, "match": None, "normalization_error": False, "timed_out": False}
        if pred == gold:
            return {**result, "correct": True, "match": "exact"}
        try:
            pred_norm, gold_norm = normalize(pred), normalize(gold)
        except NormalizationError:
            pred_norm = gold_norm = None
            result["normalization_error"] = True
        if pred_norm is not None:
            if pred_norm == gold_norm:
                return {**result, "correct": True, "match": "normalized"}
            pred_num, gold_num = _plain_number(pred_norm), _plain_number(gold_norm)
            if pred_num is not None and gold_num is not None:
                # Two plain numbers: decided here (the raw strings hold the same numbers).
                same = pred_num == gold_num or round(float(pred_num), 6) == round(float(gold_num), 6)
                return {**result, "correct": same, "match": "numeric" if same else None}
        # The normalized pair first (units and 'x =' are gone there), then the raw pair, which is what a
        # normalization the pair does not fit cannot spoil.
        candidates = [(gold_norm, pred_norm, "symbolic"),
                      (brace_arguments(gold), brace_arguments(pred), "symbolic_raw")]
        deadline = time.monotonic() + self.checker.timeout_s
        tried = set()
        for g, p, how in candidates:
            if not g or not p or (g, p) in tried:
                continue
            tried.add((g, p))
            left = deadline - time.monotonic()
            if left <= 0:
                result["timed_out"] = True
                break
            verdict = self.checker.equivalent(g, p, timeout_s=left)
            if verdict:
                return {**result, "correct": True, "match": how}
            if verdict is None:
                result["timed_out"] = True
                break
        if result["normalization_error"]:
            result["correct"] = self.exception_correct
        return result

    def score(self, completion: str, gold: str) -> dict:
        prediction = extract_prediction(completion)
        if prediction is None:
            return {"prediction": None, "correct": False, "match": None, "normalization_error": False,
                    "timed_out": False}
        return {"prediction": prediction, **self.compare(prediction, gold)}

    def summary(self, records: list[dict]) -> dict:
        n = max(len(records), 1)
        errors = [bool(r.get("normalization_error")) for r in records]
        return {
            "exception_correct": self.exception_correct,
            # A normalization error counts under the strict rule only where a symbolic check proved the pair.
            "accuracy_exception_wrong": sum(r["correct"] and (not e or r.get("match") is not None)
                                            for r, e in zip(records, errors)) / n,
            "accuracy_exception_correct": sum(r["correct"] or e for r, e in zip(records, errors)) / n,
            "n_normalization_errors": sum(errors),
            "n_timeouts": sum(bool(r.get("timed_out")) for r in records),
        }

    def close(self) -> None:
        self.checker.close()

    def __enter__(self) -> "MathScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
