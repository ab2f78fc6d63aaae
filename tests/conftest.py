"""Shared fixtures: the real benchmark files beside the repository, tiny random models, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ABBA_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

TINY_MODELS = ("tiny_llama", "tiny_mistral", "tiny_gemma")


def model_cfg(name: str) -> dict:
    """The parsed configs/model/<name>.yaml."""
    return yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"real benchmark files not found at {SHARED_DATA}: clone the repository beside ../shared "
                    "or set ABBA_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from abba.modeling import load_tokenizer

    return load_tokenizer(model_cfg("tiny_llama"))


def tiny_model(name: str = "tiny_llama", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A tiny random causal LM built from its config file (no download)."""
    from abba.modeling import build_model

    return build_model(model_cfg(name), dtype=dtype, seed=seed)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
