"""Tokenize prompt + response for causal-LM fine-tuning, as the paper's pipeline (LLM-Adapters) does:

* the full text prompt + response is tokenized and truncated at `max_length`;
* EOS is appended when the sequence has room for it;
* labels are -100 on the prompt tokens (the length of the tokenized prompt alone), so only the response is learned;
* the number of truncated examples is counted and logged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from .templates import format_example

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


def tokenize_example(record: Mapping[str, str], tokenizer, max_length: int, official_indent: bool = False) -> dict[str, Any]:
    prompt, response = format_example(record["instruction"], record["input"], record["output"], official_indent)
    full = tokenizer(prompt + response, add_special_tokens=True)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    truncated = len(full) + 1 > max_length  # +1: the EOS this example should end with
    ids = full[:max_length]
    if len(ids) < max_length and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * min(n_prompt, len(ids)) + ids[n_prompt:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "truncated": truncated}


def tokenize_dataset(records, tokenizer, data_cfg: Mapping[str, Any]):
    """`datasets.map` over the records (multiprocess with data.num_proc, cached for file-backed data)."""
    max_length = int(data_cfg["max_length"])
    official_indent = bool(data_cfg.get("official_indent", False))
    num_proc = data_cfg.get("num_proc") or None
    if num_proc is not None and num_proc <= 1:
        num_proc = None
    ds = records.map(
        tokenize_example,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "official_indent": official_indent},
        remove_columns=records.column_names,
        num_proc=num_proc,
        desc="tokenizing",
    )
    n_truncated = int(sum(ds["truncated"]))
    log.warning("truncated %d of %d training examples at max_length %d", n_truncated, len(ds), max_length)
    ds = ds.remove_columns("truncated")
    # Examples whose prompt fills max_length teach nothing (all labels masked); drop them.
    keep = ds.filter(lambda r: any(label != IGNORE_INDEX for label in r["labels"]), desc="dropping empty examples")
    if len(keep) < len(ds):
        log.warning("dropped %d examples with no response tokens left after truncation", len(ds) - len(keep))
    return keep, n_truncated
