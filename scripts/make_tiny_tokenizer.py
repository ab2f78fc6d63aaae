"""Build the small byte-level BPE tokenizer shipped in abba/assets/tiny_tokenizer/.

The tiny random models used by the tests and the CPU quickstart need a tokenizer that exists without the
Hugging Face Hub. This script trains one on text the repository writes itself (the prompt templates, digits,
arithmetic words), so it is reproducible:

    python scripts/make_tiny_tokenizer.py            # rewrites abba/assets/tiny_tokenizer/
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from abba.data.templates import ANSWER_MARKER, PREAMBLE

OUT = Path(__file__).resolve().parents[1] / "abba" / "assets" / "tiny_tokenizer"
VOCAB_SIZE = 512

CORPUS = [
    PREAMBLE,
    "### Instruction:\n", "### Response:\n", "### Response: Let's think step by step.", ANSWER_MARKER,
    "Please answer the following question with true or false, question: ",
    "Please choose the correct answer to fill in the blank to complete the given sentence: ",
    "Please choose the correct solution to the question: ", "Please choose the correct ending to complete the given sentence: ",
    "Answer format: true/false solution1/solution2 answer1/answer2/answer3/answer4/answer5 ending1/ending2/ending3/ending4 option1/option2",
    "the correct answer is true false solution1 solution2 answer1 answer2 answer3 answer4 answer5 ending1 ending2 ending3 ending4 option1 option2",
    "How many apples does she have left? He buys 3 boxes of pencils and gives away 12. She earns $15 per hour.",
    "Tom has 5 marbles. Anna gives him 7 more. How many marbles does Tom have now? 5 + 7 = 12 #### 12",
    "What is the total cost of the tickets? Each costs 4 dollars, so 6 * 4 = 24 dollars. #### 24",
    " ".join(str(i) for i in range(200)), "+ - * / = ( ) $ % . , ? ! : ; \\frac{1}{2} \\boxed{} \\sqrt{2}",
]


def main() -> None:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} (vocab {len(fast)})")


if __name__ == "__main__":
    main()
