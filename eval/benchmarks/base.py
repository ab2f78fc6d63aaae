"""What a benchmark is: where its items come from, how each becomes a prompt, how it is decoded and scored.

One `Benchmark` per task (lm-eval-harness style); the task files (`gsm8k.py`, `competition_math.py`,
`commonsense.py`) only fill in these fields. `load_items` reads the local file under `paths.data_dir`, or
`data_file=`, or falls back to the Hugging Face Hub, and otherwise stops with one message saying what to
download and where to put it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from abba.data.templates import PREAMBLE
from abba.files import read_jsonl

# The MetaMath/ABBA arithmetic evaluation prompt (the commonsense one is abba.data.templates.format_prompt).
ARITHMETIC_PROMPT = PREAMBLE + "\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step."
# The released evaluators (gsm8k_eval.py, MATH_eval.py, commonsense_eval.py) pass these to vLLM as stop strings:
# a completion ends where the model starts another "### Instruction:" or "### Response:" block.
ALPACA_STOP = ("Instruction:", "Instruction", "Response:", "Response")
ARITHMETIC_STOP = ALPACA_STOP


class DataMissingError(FileNotFoundError):
    """A benchmark's data is neither on disk nor reachable; the message says what to download and where."""


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filtering

    def as_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k}


@dataclass(frozen=True)
class HubSource:
    path: str
    configs: tuple[str | None, ...] = (None,)  # several configs are concatenated in order
    split: str = "test"


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    gold: str
    # The gold response as a training record {instruction, input, output} (Benchmark.reference), or None.
    reference: Mapping[str, str] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Benchmark:
    name: str
    local_file: str                              # relative to paths.data_dir
    file_format: str                             # "jsonl" or "json" (a JSON list)
    download_hint: str                           # where the local file comes from
    prompt: Callable[[dict], str]
    gold: Callable[[dict], str]
    decoding: Decoding
    make_scorer: Callable[[Any], Any]            # (eval config) -> scorer (eval.scoring)
    stop: tuple[str, ...] = ()
    hub: HubSource | None = None
    item_id: Callable[[dict, int], str] = field(default=lambda record, index: str(index))
    # The gold response as a training record {instruction, input, output}, tokenized by
    # abba.data.tokenize_example for eval.run nll=true; None: the benchmark has no reference response.
    reference: Callable[[dict], Mapping[str, str]] | None = None

    def __post_init__(self):
        if self.stop:  # the scorer reads a completion cut at its first stop string, as generation returns it
            make, stop = self.make_scorer, self.stop
            object.__setattr__(self, "make_scorer", lambda cfg: StopCutScorer(make(cfg), stop))

    def items(self, records: list[dict], indices: list[int] | None = None, references: bool = False) -> list[Item]:
        """Items of `records`; `indices` are their positions in the data file (default 0, 1, ...), which ids use.
        `references`: fill in Item.reference (only then must a record hold the reference's fields)."""
        indices = range(len(records)) if indices is None else indices
        return [Item(self.item_id(r, i), self.prompt(r), self.gold(r), self._reference(r, i) if references else None)
                for i, r in zip(indices, records)]

    def _reference(self, record: dict, index: int) -> Mapping[str, str]:
        if self.reference is None:
            raise ValueError(f"benchmark {self.name} has no reference response")
        try:
            return self.reference(record)
        except KeyError as error:
            raise ValueError(f"{self.name} record {index} has no {error} field for its reference response") from None


class StopCutScorer:
    """A scorer that first cuts the completion at the benchmark's stop strings, as both backends do after
    generating, so that a completion read from a file (eval.rescore, a samples file from before a stop string was
    added, another tool's output) scores as the released evaluators score it: "Response: answer2" becomes "",
    no answer. Everything else is the wrapped scorer's."""

    def __init__(self, scorer: Any, stop: tuple[str, ...]):
        self.scorer, self.stop = scorer, stop

    def score(self, completion: str, gold: str) -> dict:
        from ..backends import truncate_at_stop

        return self.scorer.score(truncate_at_stop(completion, self.stop), gold)

    def __getattr__(self, name: str):
        return getattr(self.scorer, name)


def read_records(path: Path, file_format: str) -> list[dict]:
    if file_format == "jsonl" or path.suffix == ".jsonl":
        return read_jsonl(path)
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path} should hold a JSON list of records, found {type(data).__name__}")
    return data


def _from_hub(hub: HubSource) -> list[dict]:
    import datasets

    records: list[dict] = []
    for config in hub.configs:
        records.extend(datasets.load_dataset(hub.path, config, split=hub.split))
    return records


def load_records(bench: Benchmark, data_dir: str | Path, data_file: str | Path | None = None) -> list[dict]:
    """The benchmark's records: `data_file`, else `<data_dir>/<local_file>`, else the Hub, else a clear error."""
    if data_file:
        path = Path(data_file)
        if not path.is_file():
            raise DataMissingError(f"data_file={data_file} does not exist")
        return read_records(path, bench.file_format)
    path = Path(data_dir) / bench.local_file
    if path.is_file():
        return read_records(path, bench.file_format)
    hub_error = ""
    if bench.hub is not None:
        try:
            return _from_hub(bench.hub)
        except Exception as error:  # offline, gated, renamed: fall through to the instructions
            hub_error = f" (Hub {bench.hub.path} failed: {type(error).__name__})"
    raise DataMissingError(f"no data for benchmark {bench.name}: put {bench.download_hint} at {path} "
                           f"(`bash scripts/get_data.sh only={bench.name} data_dir={data_dir}` fetches it; or pass "
                           f"data_file=PATH){hub_error}")
