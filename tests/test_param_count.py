"""Trainable parameter counts at the paper's real model shapes, from configs on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from abba import ABBAConfig, get_abba_model
from abba.config import LLAMA_TARGETS
from abba.base_model import architecture_config
from conftest import model_cfg


def meta_model(name: str):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(architecture_config(model_cfg(name)))


def abba_count(name: str, r: int) -> int:
    model = get_abba_model(meta_model(name), ABBAConfig(r1=r, r2=r, target_modules=list(LLAMA_TARGETS)))
    return model.trainable_parameter_count()[0]


def lora_count(name: str, r: int) -> int:
    model = get_peft_model(meta_model(name), LoraConfig(r=r, target_modules=list(LLAMA_TARGETS)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_llama3_2_1b_abba_r32_and_r16_match_the_paper():
    # Per decoder layer, (r1 + r2) * sum(d_in + d_out) over q,k,v,o,gate,up,down, 16 layers:
    # (2048+2048) + 2 (2048+512) + (2048+2048) + 3 (2048+8192) = 44032.
    assert abba_count("llama3_2_1b", 16) == 32 * 44032 * 16 == 22_544_384  # paper v4 Table 1: 22.54 M
    assert abba_count("llama3_2_1b", 8) == 16 * 44032 * 16 == 11_272_192  # paper v4 Table 1: 11.27 M


@pytest.mark.parametrize(
    "name, paper_millions",
    [("llama3_2_3b", 48.63), ("mistral_7b", 83.88), ("gemma2_9b", 108.04)],  # paper v4 Tables 1 and 2
)
def test_abba_r32_equals_lora_r32_and_the_paper_at_every_model(name, paper_millions):
    count = abba_count(name, 16)
    assert count == lora_count(name, 32)  # same parameters as peft's own LoRA r=32
    assert abs(count / 1e6 - paper_millions) < 0.01  # the paper rounds (3B, 9B) or truncates (7B) to 2 decimals
