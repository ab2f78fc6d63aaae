"""The eight commonsense reasoning test sets in the LLM-Adapters format (instruction/input/output/answer).

ABBA protocol (FACTS.md item 9): the Alpaca prompt ending "### Response:\\n", sampling with temperature 0.1,
top_p 0.75, top_k 40, 32 new tokens, fixed seed; the completion is cut at the first stop string ("Instruction:",
"Instruction", "Response:", "Response", as the released commonsense_eval.py does), and the first answer word in the
lowercased rest is the prediction: "Response: answer2" has none. The reference response (eval.run nll=true) is
the record's `output`, e.g. "the correct answer is answer1". There is no Hub copy of these files: they come from the
LLM-Adapters repository.
"""

from abba.data.templates import format_prompt

from ..scoring.commonsense import CommonsenseScorer
from .base import ALPACA_STOP, Benchmark, Decoding

DECODING = Decoding(max_new_tokens=32, do_sample=True, temperature=0.1, top_p=0.75, top_k=40)
SOURCE = "https://github.com/AGI-Edgerunners/LLM-Adapters/tree/main/dataset"

VOCABULARIES = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": tuple(f"answer{i}" for i in range(1, 6)),
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Challenge": tuple(f"answer{i}" for i in range(1, 6)),
    "openbookqa": tuple(f"answer{i}" for i in range(1, 6)),
}


def _benchmark(name: str, vocabulary: tuple[str, ...]) -> Benchmark:
    return Benchmark(
        name=name,
        local_file=f"commonsense/{name}/test.json",
        file_format="json",
        download_hint=f"{SOURCE}/{name}/test.json",
        prompt=lambda r: format_prompt(r["instruction"], r.get("input", "")),
        gold=lambda r: r["answer"],
        # The training record (Commonsense170K has the same schema): the prompt is the evaluation prompt above.
        reference=lambda r: {"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]},
        decoding=DECODING,
        stop=ALPACA_STOP,
        make_scorer=lambda cfg: CommonsenseScorer(vocabulary),
    )


COMMONSENSE = {name: _benchmark(name, vocab) for name, vocab in VOCABULARIES.items()}
