"""Load base models and tokenizers from a `configs/model/*.yaml` entry (or a plain dict of the same keys).

Every model file carries its architecture, so `random_init: true` builds the model with random weights and
no download (tests, the CPU quickstart, GPU benchmarks without Hub access). Otherwise the weights come from
`name_or_path` (Hub id or local folder) through transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = REPO_ROOT / "abba" / "assets" / "tiny_tokenizer"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_path(path: str | Path) -> str:
    """A relative path that does not exist from the working directory is looked up from the repository root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return str(path)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    return dict(cfg)


def architecture_config(model_cfg: Mapping[str, Any]):
    """The transformers config object described by a model entry's `architecture` block."""
    from transformers import AutoConfig

    arch = dict(_plain(model_cfg)["architecture"])
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(model_type, **arch)


def build_model(model_cfg: Mapping[str, Any], dtype: str | torch.dtype | None = None, seed: int = 0,
                device: str | torch.device | None = None, **from_pretrained_kwargs):
    """A causal LM: random weights from `architecture` when `random_init`, else `from_pretrained(name_or_path)`."""
    from transformers import AutoModelForCausalLM

    cfg = _plain(model_cfg)
    dtype = torch_dtype(dtype or cfg.get("dtype", "float32"))
    if cfg.get("random_init", False):
        config = architecture_config(cfg)
        config.name_or_path = cfg.get("name_or_path") or cfg.get("name", "random")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if device is not None:
            model.to(device)
        return model
    return AutoModelForCausalLM.from_pretrained(
        resolve_path(cfg["name_or_path"]), dtype=dtype, device_map=device, **from_pretrained_kwargs
    )


def load_tokenizer(model_cfg: Mapping[str, Any] | str | Path):
    """The model entry's tokenizer (falls back to `name_or_path`), always with a pad token; the padding side is
    the tokenizer's own (generation callers set left padding themselves)."""
    from transformers import AutoTokenizer

    if isinstance(model_cfg, (str, Path)):
        source = str(model_cfg)
    else:
        cfg = _plain(model_cfg)
        source = cfg.get("tokenizer") or cfg["name_or_path"]
    tok = AutoTokenizer.from_pretrained(resolve_path(source))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
