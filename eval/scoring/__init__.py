"""Answer extraction and scoring for each benchmark family (no model needed; `eval.rescore` uses these alone).

Every scorer has `score(completion, gold) -> dict` with at least `prediction` (str or None when no answer could be
extracted) and `correct` (bool), `summary(records) -> dict` for extra metrics, and `close()`.
"""

from .commonsense import CommonsenseScorer
from .gsm8k import GSM8KScorer
from .math_scorer import MathScorer

__all__ = ["CommonsenseScorer", "GSM8KScorer", "MathScorer"]
