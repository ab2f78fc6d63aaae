"""GSM8K test (1319 problems), MetaMath/ABBA protocol: greedy, 256 new tokens, answer after "The answer is: ".

The reference response (eval.run nll=true) is the worked solution in the training format
(abba.data.sources.gsm8k_to_metamath: calculator annotations dropped, ending "The answer is: n") under the
training prompt, which lacks the evaluation prompt's trailing " Let's think step by step."."""

from abba.data.sources import gsm8k_to_metamath

from ..scoring.gsm8k import GSM8KScorer, gold_answer
from .base import ARITHMETIC_PROMPT, ARITHMETIC_STOP, Benchmark, Decoding, HubSource

GSM8K = Benchmark(
    name="gsm8k",
    local_file="math_eval/gsm8k_test.jsonl",
    file_format="jsonl",
    download_hint="the GSM8K test split as JSONL with fields question/answer (Hub openai/gsm8k, config main, "
                  "or MetaMath's data/test/GSM8K_test.jsonl)",
    hub=HubSource("openai/gsm8k", ("main",), "test"),
    prompt=lambda r: ARITHMETIC_PROMPT.format(question=r["question"]),
    gold=lambda r: gold_answer(r["answer"]),
    reference=lambda r: gsm8k_to_metamath(r["question"], r["answer"]),
    decoding=Decoding(max_new_tokens=256),
    stop=ARITHMETIC_STOP,
    make_scorer=lambda cfg: GSM8KScorer(round_prediction=bool(cfg.get("gsm8k_round_prediction", True))),
)
