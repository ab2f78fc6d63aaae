"""Answer extraction and scoring on the real benchmark files (the excerpts in tests/data always, the full files in
../shared/data when present) and on hand-checked pairs."""

from __future__ import annotations

import json
import re
import time
from fractions import Fraction

import pytest
from conftest import EXCERPTS, expected_records

from eval.benchmarks import BENCHMARKS, GROUPS, load_items
from eval.benchmarks.commonsense import VOCABULARIES
from eval.scoring.commonsense import CommonsenseScorer
from eval.scoring.gsm8k import GSM8KScorer, extract_prediction, parse_number
from eval.scoring.math_normalize import last_boxed, normalize
from eval.scoring.math_scorer import MathScorer, _plain_number


@pytest.fixture(scope="module")
def math_scorer():
    scorer = MathScorer(timeout_s=2.0)
    yield scorer
    scorer.close()


# ------------------------------------------------------------------ GSM8K
def test_gsm8k_every_gold_parses_and_scores(excerpts_and_full):
    items = load_items(BENCHMARKS["gsm8k"], excerpts_and_full)
    assert len(items) == expected_records(excerpts_and_full, "math_eval/gsm8k_test.jsonl")  # 1319 in the full file
    scorer = GSM8KScorer()
    golds = [parse_number(item.gold) for item in items]
    assert all(g is not None and g.denominator == 1 for g in golds)
    right = [scorer.score(f"So she makes 9 * 2 = 18.\nThe answer is: {item.gold}", item.gold) for item in items]
    wrong = [scorer.score(f"The answer is: {g + 1}", item.gold) for g, item in zip(golds, items)]
    assert all(r["correct"] for r in right)
    assert not any(w["correct"] for w in wrong)


@pytest.mark.parametrize("completion, expected", [
    ("The answer is: 1,234,567", Fraction(1234567)),       # the official regex would read 1,234
    ("... The answer is: 7. The answer is: -42 dollars", Fraction(-42)),   # the last marker counts
    ("The answer is: $18.00", Fraction(18)),
    ("The answer is: 3/4", Fraction(3, 4)),
    ("The answer is: .5", Fraction(1, 2)),
    ("The answer is: 12 / 3 = 4", Fraction(12)),           # no spaces inside a fraction, as the official regex
    ("The answer is: 3/0", Fraction(3)),                    # official: a zero denominator gives the numerator
    ("The answer is: 2,5", Fraction(2)),                    # not a thousands separator: the number ends there
])
def test_gsm8k_number_extraction(completion, expected):
    assert parse_number(extract_prediction(completion)) == expected


def test_gsm8k_rounding_option_and_missing_answer():
    # Official behaviour: the prediction is rounded to an integer before the comparison.
    assert GSM8KScorer(round_prediction=True).score("The answer is: 17.6", "18")["correct"]
    assert not GSM8KScorer(round_prediction=False).score("The answer is: 17.6", "18")["correct"]
    assert GSM8KScorer().score("The total is 18.", "18") == {"prediction": None, "correct": False}


# ------------------------------------------------------------------- MATH
def test_math_every_gold_parses_and_scores(excerpts_and_full, math_scorer):
    items = load_items(BENCHMARKS["math"], excerpts_and_full)
    assert len(items) == expected_records(excerpts_and_full, "math_eval/MATH_test.jsonl")  # 5000 in the full file
    records = [json.loads(line) for line in (excerpts_and_full / "math_eval" / "MATH_test.jsonl").open()]
    assert all(item.gold == last_boxed(r["solution"]) and item.gold for item, r in zip(items, records))
    right = [math_scorer.score(f"We are done.\nThe answer is: {item.gold}", item.gold) for item in items]
    assert all(r["correct"] for r in right)
    # Wrong answers: numeric golds (the fast numeric path) all; symbolic golds every 5th (math-verify takes
    # ~15 ms per pair; all 1005 would cost 15 s of the suite's budget).
    numeric = [(item, _plain_number(normalize(item.gold))) for item in items]
    numeric_wrong = [math_scorer.score(f"The answer is: {value + 1}", item.gold) for item, value in numeric
                     if value is not None]
    symbolic_items = [item for item, value in numeric if value is None][::5]
    symbolic_wrong = [math_scorer.score("The answer is: 123457", item.gold) for item in symbolic_items]
    if excerpts_and_full == EXCERPTS:  # both kinds of gold are among the 35 excerpt problems
        assert numeric_wrong and symbolic_wrong
    else:
        assert len(numeric_wrong) > 3900 and len(symbolic_wrong) > 190
    assert not any(r["correct"] for r in numeric_wrong + symbolic_wrong)


@pytest.mark.parametrize("gold, pred, equal", [
    (r"\frac{1}{2}", "1/2", True),
    (r"\frac{1}{2}", "0.5", True),
    ("1/2", "0.5", True),
    (r"\dfrac{3}{4}", r"\frac34", True),
    (r"10\%", "10", True),
    ("x = 3", "3", True),
    ("(1,2)", "(2,1)", False),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True),
    (r"90^\circ", "90", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    ("x^2+1", "1+x^2", True),
    (r"\frac{1}{3}", "0.34", False),
    ("2", "3", False),
])
def test_math_equivalence_hand_checked(math_scorer, gold, pred, equal):
    assert math_scorer.compare(pred, gold)["correct"] is equal


def test_last_boxed_balanced_braces():
    assert last_boxed(r"so $\boxed{1}$ then $\boxed{\frac{\sqrt{3}}{2}}$.") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed 5$") == "5"
    assert last_boxed("no box") is None


def test_math_pathological_expression_times_out_as_wrong():
    with MathScorer(timeout_s=1.0) as scorer:
        start = time.monotonic()
        result = scorer.compare(r"9^{9^{9^{9}}}", r"10^{10^{10}}")
        elapsed = time.monotonic() - start
        assert result["correct"] is False and result["timed_out"] is True
        assert elapsed < 5
        assert scorer.compare(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}")["correct"]  # a fresh worker takes over


def test_math_normalization_exception_option():
    # "\sqrt" with no argument makes the reference normalization raise: wrong by default, right officially.
    completion, gold = "The answer is: 2\\sqrt", "2\\sqrt{2}"
    with MathScorer() as strict, MathScorer(exception_correct=True) as official:
        strict_record, official_record = strict.score(completion, gold), official.score(completion, gold)
        assert strict_record["normalization_error"] and not strict_record["correct"]
        assert official_record["correct"]
        summary = strict.summary([strict_record, strict.score("The answer is: 5", "5")])
    assert summary["accuracy_exception_wrong"] == 0.5 and summary["accuracy_exception_correct"] == 1.0


# ------------------------------------------------------------ commonsense
@pytest.mark.parametrize("name", GROUPS["commonsense"])
def test_commonsense_golds_and_scoring(excerpts_and_full, name):
    items = load_items(BENCHMARKS[name], excerpts_and_full)
    vocabulary = VOCABULARIES[name]
    assert len(items) == expected_records(excerpts_and_full, f"commonsense/{name}/test.json")
    assert all(item.gold in vocabulary for item in items)
    assert all(item.prompt.endswith("### Response:\n") for item in items)
    scorer = BENCHMARKS[name].make_scorer({})
    assert all(scorer.score(f"the correct answer is {item.gold}", item.gold)["correct"] for item in items)
    wrong = [vocabulary[(vocabulary.index(item.gold) + 1) % len(vocabulary)] for item in items]
    assert not any(scorer.score(f"The correct answer is {w}", item.gold)["correct"] for w, item in zip(wrong, items))


# The released ABBA evaluator (instruction_tuning_eval/commonsense_eval.py), written out independently: vLLM stops
# at the first of these strings and drops it and what follows; extract_answer takes the first vocabulary word of
# completion.strip().lower(), "" when there is none; correct iff it equals the gold answer.
RELEASED_STOP = ["Instruction:", "Instruction", "Response:", "Response"]


def _released_score(completion: str, gold: str, vocabulary: tuple[str, ...]) -> bool:
    cuts = [completion.index(s) for s in RELEASED_STOP if s in completion]
    text = completion[:min(cuts)] if cuts else completion
    found = re.findall("|".join(vocabulary), text.strip().lower())
    return (found[0] if found else "") == gold


@pytest.mark.parametrize("name", GROUPS["commonsense"])
def test_commonsense_specs_stop_where_the_released_evaluator_stops(name):
    assert list(BENCHMARKS[name].stop) == RELEASED_STOP


def test_commonsense_completion_is_cut_at_the_first_stop_string_before_scoring():
    scorer = BENCHMARKS["ARC-Easy"].make_scorer({})
    # Hand-checked: the cut leaves "", which has no answer word: invalid, hence wrong (it was "answer2", right).
    assert scorer.score("Response: answer2", "answer2") == {"prediction": None, "correct": False}
    # The answer before the model starts a new prompt block counts; the one after it does not.
    tail = "answer1\n\n### Instruction: Which is larger?\n\n### Response: answer2"
    assert scorer.score(tail, "answer1") == {"prediction": "answer1", "correct": True}
    assert scorer.score(tail, "answer2") == {"prediction": "answer1", "correct": False}
    assert scorer.score("the correct answer is\n\n### Response: answer2", "answer2")["prediction"] is None
    # Stop strings match case-sensitively, as vLLM's do: "response" is text, "Responses" contains a stop string.
    assert scorer.score("response: answer2", "answer2")["correct"]
    assert scorer.score("Responses differ; answer2", "answer2")["prediction"] is None


def test_commonsense_scores_agree_with_the_released_evaluator():
    completions = ["Response: answer2", "answer1\n\n### Instruction: x\n\n### Response: answer2", "answer3",
                   "the correct answer is answer4 ### Response", "Instruction answer1", "ANSWER5\nInstructions",
                   " option2", "solution1 Response: solution2", "true\n### Instruction:\nfalse", "ending4",
                   "I am not sure", "response answer2 Response answer3", ""]
    for name in GROUPS["commonsense"]:
        vocabulary, scorer = VOCABULARIES[name], BENCHMARKS[name].make_scorer({})
        for completion in completions:
            for gold in vocabulary:
                assert scorer.score(completion, gold)["correct"] == _released_score(completion, gold, vocabulary), \
                    (name, completion, gold)


def test_commonsense_first_match_in_lowercased_completion():
    scorer = CommonsenseScorer(VOCABULARIES["ARC-Easy"])
    assert scorer.score("Answer3 is right, not answer1", "answer3") == {"prediction": "answer3", "correct": True}
    assert scorer.score("I am not sure", "answer1") == {"prediction": None, "correct": False}
    assert CommonsenseScorer(VOCABULARIES["boolq"]).score("FALSE. true", "false")["correct"]
