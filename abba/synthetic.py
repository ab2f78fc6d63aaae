"""Synthetic arithmetic word problems in GSM8K's format, for the quickstart (no download needed).

    python -m abba.synthetic out_dir=outputs/quickstart/data n_train=2000 n_test=100 seed=0

Writes `train.jsonl` and `test.jsonl` with GSM8K's fields: `question`, and `answer` = worked steps with
calculator annotations (`<<7+5=12>>`) ending in `#### n`, so the training side reads them with data.format=gsm8k
and the evaluation scores them with the GSM8K scorer (eval.run benchmark=gsm8k data_file=.../test.jsonl).
Problems are one- or two-step stories over small whole numbers; the splits are disjoint by question text.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from .cli import Refusal, UsageError, one_line_errors, parse_key_values
from .files import write_jsonl

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def _add(rng: random.Random) -> tuple[str, list[str], int]:
    name, item, a, b = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 40), rng.randint(2, 40)
    q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
    return q, [f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}."], a + b


def _subtract(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(10, 60)
    b = rng.randint(1, a - 1)
    q = f"{name} had {a} {item} and gave away {b} of them. How many {item} are left?"
    return q, [f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left."], a - b


def _multiply(rng: random.Random) -> tuple[str, list[str], int]:
    name, item, boxes, per = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 9), rng.randint(2, 12)
    q = f"{name} buys {boxes} boxes with {per} {item} in each box. How many {item} does {name} buy?"
    return q, [f"{name} buys {boxes} * {per} = <<{boxes}*{per}={boxes * per}>>{boxes * per} {item}."], boxes * per


def _price(rng: random.Random) -> tuple[str, list[str], int]:
    name, item, n, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 8), rng.randint(1, 9)
    cost = n * price
    paid = cost + rng.randint(1, 20)
    q = (f"{name} buys {n} {item} at ${price} each and pays with ${paid}. "
         f"How much change does {name} get in dollars?")
    steps = [f"The {item} cost {n} * {price} = <<{n}*{price}={cost}>>{cost} dollars.",
             f"The change is {paid} - {cost} = <<{paid}-{cost}={paid - cost}>>{paid - cost} dollars."]
    return q, steps, paid - cost


def _two_step(rng: random.Random) -> tuple[str, list[str], int]:
    name, friend, item = rng.sample(NAMES, 2) + [rng.choice(ITEMS)]
    a, b = rng.randint(5, 30), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    total = a + b
    q = (f"{name} has {a} {item}. {friend} gives {name} {b} more, then {name} uses {c} of them. "
         f"How many {item} does {name} have?")
    steps = [f"After the gift {name} has {a} + {b} = <<{a}+{b}={total}>>{total} {item}.",
             f"After using some, {name} has {total} - {c} = <<{total}-{c}={total - c}>>{total - c} {item}."]
    return q, steps, total - c


TEMPLATES = (_add, _subtract, _multiply, _price, _two_step)


def make_problem(rng: random.Random) -> dict[str, str]:
    """One record {"question", "answer"} in GSM8K's format."""
    question, steps, result = rng.choice(TEMPLATES)(rng)
    return {"question": question, "answer": "\n".join(steps) + f"\n#### {result}"}


def generate(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint train/test splits (no test question appears in train), deterministic in `seed`."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[dict] = []
    attempts = 0
    while len(records) < n_train + n_test:
        attempts += 1
        if attempts > 50 * (n_train + n_test) + 1000:
            raise ValueError(f"cannot draw {n_train + n_test} distinct problems; ask for fewer")
        record = make_problem(rng)
        if record["question"] not in seen:
            seen.add(record["question"])
            records.append(record)
    return records[:n_train], records[n_train:]


USAGE = "usage: python -m abba.synthetic [out_dir=DIR] [n_train=N] [n_test=N] [seed=N]"


def main(argv: list[str] | None = None) -> None:
    """The command line: `train.jsonl` and `test.jsonl` under out_dir. A bad key or value (a count that is not a
    whole number >= 0, more problems than can be drawn) is one `error:` line and exit 2, an out_dir that cannot
    be written (a file, no permission) exit 1 (abba/cli.py)."""
    options = {"out_dir": "outputs/quickstart/data", "n_train": "2000", "n_test": "100", "seed": "0"}
    with one_line_errors(usage=(UsageError, ValueError), refusals=(Refusal,)):
        args = parse_key_values(sys.argv[1:] if argv is None else argv, options, USAGE)
        numbers = {}
        for key in ("n_train", "n_test", "seed"):
            try:
                numbers[key] = int(args[key])
            except ValueError:
                raise UsageError(f"{key}={args[key]}: expected a whole number; {USAGE}") from None
        out_dir = Path(args["out_dir"])
        train, test = generate(numbers["n_train"], numbers["n_test"], numbers["seed"])
        try:
            write_jsonl(out_dir / "train.jsonl", train)
            write_jsonl(out_dir / "test.jsonl", test)
        except OSError as error:
            raise Refusal(f"cannot write under out_dir={out_dir} ({type(error).__name__}: {error.strerror or error})"
                          ": pass a folder that can be written (it is created when missing)") from None
    print(f"synthetic arithmetic: {len(train)} train -> {out_dir / 'train.jsonl'}, "
          f"{len(test)} test -> {out_dir / 'test.jsonl'}")


if __name__ == "__main__":
    main()
