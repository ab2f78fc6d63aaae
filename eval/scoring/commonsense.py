"""Commonsense (LLM-Adapters format): the first word of the benchmark's answer vocabulary in the lowercased
completion, compared exactly with the gold label (`true`, `solution2`, `answer3`, `ending1`, `option2`, ...)."""

from __future__ import annotations

import re


class CommonsenseScorer:
    def __init__(self, vocabulary: tuple[str, ...]):
        self.vocabulary = vocabulary
        self.pattern = re.compile("|".join(re.escape(word) for word in vocabulary))

    def score(self, completion: str, gold: str) -> dict:
        match = self.pattern.search(completion.lower())
        prediction = match.group() if match else None
        return {"prediction": prediction, "correct": prediction is not None and prediction == gold.strip().lower()}

    def summary(self, records: list[dict]) -> dict:
        return {}

    def close(self) -> None:
        pass
