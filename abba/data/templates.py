"""The Alpaca-style prompt of the paper's pipeline (LLM-Adapters / MetaMathQA lineage) and the answer marker: the one
place their text is written (training, the evaluation prompts in eval.benchmarks, the scorers in eval.scoring).

    format_example("What is 2+2?", "", "The answer is: 4")
    -> ("Below is an instruction ... ### Response:\n", "The answer is: 4")

The prompt part is what `abba.data.tokenize` masks out of the loss; the response part is learned. A MetaMathQA
response ends with `ANSWER_MARKER` and the answer, which is what the arithmetic scorers read.

Where the authors' released code differs (paper v4 App. L vs. FACTS.md "official code" item 7): its
commonsense *training* prompt is a triple-quoted string inside a function, so every line after the first
carries 12 spaces of indentation, while its evaluation prompt does not. `official_indent=True` reproduces
that; the default is the unindented template, which is what evaluation uses.
"""

from __future__ import annotations

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
OFFICIAL_INDENT = " " * 12
#: What precedes the final answer in a MetaMathQA-style response (GSM8K's training form and the scorers follow it).
ANSWER_MARKER = "The answer is: "


def format_prompt(instruction: str, input_text: str = "", official_indent: bool = False) -> str:
    """The prompt up to and including '### Response:\\n' (the model learns what follows)."""
    if input_text:
        prompt = f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    else:
        prompt = f"{PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    if official_indent:
        prompt = prompt.replace("\n", "\n" + OFFICIAL_INDENT)
    return prompt


def format_example(instruction: str, input_text: str, output: str, official_indent: bool = False) -> tuple[str, str]:
    """(prompt, response) for one training record."""
    return format_prompt(instruction, input_text, official_indent), output
