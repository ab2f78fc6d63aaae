"""GSM8K: the number after the last "The answer is: " against the number after "#### " in the gold solution.

Follows the MetaMath/ABBA evaluator: the prediction is the first number after the last "The answer is: ", a
fraction a/b (no spaces) is allowed, a zero denominator gives the numerator, and the value is rounded to the
nearest integer before it is compared with the integer gold. Where the official regex `[-+]?\\d*[.,/]?\\d+`
misreads a comma, this scorer differs on purpose: any run of thousands groups is one number ("1,234,567" is
1234567, not 1234), and a comma that is not a thousands separator ends the number ("2,5" is 2, not 25).
"""

from __future__ import annotations

import re
from fractions import Fraction

from abba.data.templates import ANSWER_MARKER

_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
NUMBER = re.compile(rf"[-+]?{_UNSIGNED}(?:/{_UNSIGNED})?")


def parse_number(text: str) -> Fraction | None:
    """'1,234.5' -> 2469/2, '3/4' -> 3/4, '-7' -> -7, '3/0' -> 3 (as the official code); None if not a number."""
    text = text.replace(",", "").replace(" ", "")
    try:
        if "/" in text:
            num, den = text.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else Fraction(num)
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def gold_answer(solution: str) -> str:
    """The text after '#### ' of a GSM8K solution (e.g. '18', '1,000')."""
    if "#### " not in solution:
        raise ValueError(f"GSM8K solution has no '#### ' answer line: {solution[-80:]!r}")
    return solution.rsplit("#### ", 1)[1].strip()


def extract_prediction(completion: str) -> str | None:
    """The first number after the last 'The answer is: ', as written (None if there is none)."""
    if ANSWER_MARKER not in completion:
        return None
    match = NUMBER.search(completion.rsplit(ANSWER_MARKER, 1)[1])
    return match.group().replace(" ", "") if match else None


def format_number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


class GSM8KScorer:
    """`round_prediction=True` (the official behaviour) rounds the predicted value to an integer first."""

    def __init__(self, round_prediction: bool = True):
        self.round_prediction = round_prediction

    def score(self, completion: str, gold: str) -> dict:
        gold_value = parse_number(gold)
        if gold_value is None:
            raise ValueError(f"GSM8K gold answer is not a number: {gold!r}")
        written = extract_prediction(completion)
        value = parse_number(written) if written is not None else None
        if value is None:
            return {"prediction": None, "correct": False}
        if self.round_prediction:
            value = Fraction(round(value))
        return {"prediction": format_number(value), "correct": value == gold_value}

    def summary(self, records: list[dict]) -> dict:
        return {}

    def close(self) -> None:
        pass
