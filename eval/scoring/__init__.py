"""Answer extraction and scoring for each benchmark family (no model needed; `eval.rescore` uses these alone).

Every scorer has `score(completion, gold) -> dict` with at least `prediction` (str or None when no answer could be
extracted) and `correct` (bool), `summary(records) -> dict` for extra metrics, and `close()`. `score_record` fills
a samples record in, stamped with the scoring options (SCORING_OPTIONS) it was scored under.
"""

from __future__ import annotations

from typing import Any

from .commonsense import CommonsenseScorer
from .gsm8k import GSM8KScorer
from .math_scorer import MathScorer

#: configs/eval.yaml keys that change how a completion is scored, not what is generated. Each sample records them,
#: so a re-run with other values re-scores the saved completions instead of mixing two scorings.
SCORING_OPTIONS = ("gsm8k_round_prediction", "math_exception_correct", "math_timeout_s")


def scoring_options(cfg) -> dict[str, Any]:
    """{option: value} of SCORING_OPTIONS in `cfg` (the eval config, or any mapping holding them all)."""
    return {k: cfg[k] for k in SCORING_OPTIONS}


def score_record(scorer, record: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """`record` (with `completion` and `gold`) with prediction, correct and the scorer's extra fields filled in."""
    return {**record, **scorer.score(record["completion"], record["gold"]), "scoring": options}


__all__ = ["SCORING_OPTIONS", "CommonsenseScorer", "GSM8KScorer", "MathScorer", "score_record", "scoring_options"]
