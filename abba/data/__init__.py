"""Training data: load MetaMathQA / Commonsense170K / GSM8K-style records, format the paper's prompts,
tokenize with label masking.

    from abba.data import build_train_dataset
    dataset, n_truncated = build_train_dataset(cfg.data, tokenizer)
"""

from __future__ import annotations

from typing import Any, Mapping

from .sources import DataError, check_data_source, gsm8k_to_metamath, load_records
from .templates import format_example, format_prompt
from .tokenize import IGNORE_INDEX, tokenize_dataset, tokenize_example


def build_train_dataset(data_cfg: Mapping[str, Any], tokenizer):
    """(tokenized datasets.Dataset with input_ids/attention_mask/labels, number of truncated examples)."""
    return tokenize_dataset(load_records(data_cfg), tokenizer, data_cfg)


__all__ = ["DataError", "IGNORE_INDEX", "build_train_dataset", "check_data_source", "format_example", "format_prompt",
           "gsm8k_to_metamath", "load_records", "tokenize_dataset", "tokenize_example"]
