"""Load base models and tokenizers from a `configs/model/*.yaml` entry (or a plain dict of the same keys).

An entry's `source` says where the weights come from:

* `hub` (the default): `from_pretrained(name_or_path)`, a Hub id or a local folder;
* `gguf`: the GGUF file its `gguf` block names, converted once to a cached plain folder (abba/gguf_source.py);
* `random`: random weights from the entry's `architecture` block, nothing downloaded (tests, benchmarks).
  `random_init: true` is the same and wins over `source`.

`check_model_source` refuses an unusable source with one line before anything is loaded or written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .cli import first_line
from .layout import resolve_path


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


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


SOURCES = ("hub", "gguf", "random")


def model_source(model_cfg: Mapping[str, Any]) -> str:
    cfg = _plain(model_cfg)
    if cfg.get("random_init", False):
        return "random"
    source = cfg.get("source") or "hub"
    if source not in SOURCES:
        from .gguf_source import ModelSourceError

        raise ModelSourceError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def is_local_path(name: str | Path) -> bool:
    """Whether `name` means a local folder, never a Hub id: it exists, or it is absolute, starts with '.' or '~',
    has more than one '/', is not a valid Hub id, or its first component is an existing local folder
    (`merged/nope` beside a `merged/` folder). Everything else (`gpt2`, `meta-llama/Llama-3.2-1B`) is a Hub id."""
    text = str(name)
    if Path(text).exists() or text.startswith((".", "~", "/")) or text.count("/") > 1 or not _HUB_ID.match(text):
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def check_pretrained_path(name: str, what: str = "model") -> None:
    """Raise ModelSourceError (one line) unless `from_pretrained(name)` can find its files: a local path must be
    an existing folder (it is never looked up on the Hub); a Hub id must be cached, or the Hub must answer for it
    (one request, ~0.2 s when the network is down, instead of transformers' retries)."""
    from .gguf_source import ModelSourceError

    if is_local_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelSourceError(f"{what} folder {name} does not exist"
                                   + (" (it is a file; give its folder)" if path.is_file() else ""))
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if _hub_offline():
        raise ModelSourceError(f"loading {what} {name} from the Hugging Face Hub needs the network, but the Hub is "
                               f"offline (HF_HUB_OFFLINE=1) and there is no cached copy: use a local folder")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        return  # it exists; downloading it needs a token, which from_pretrained reports itself
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{what} {name} is neither a local folder nor a model on the Hugging Face Hub "
                               f"(private models need `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - any transport failure: DNS, refused connection, timeout, HTTP 5xx
        first = first_line(exc, type(exc).__name__)
        raise ModelSourceError(f"cannot reach the Hugging Face Hub for {what} {name} ({first}): check the "
                               f"network, or use a local folder") from None


def check_model_source(model_cfg: Mapping[str, Any]) -> None:
    """Raise ModelSourceError (one line) when the entry's weights cannot be had: a missing or wrong GGUF file, a
    local folder that does not exist, or a Hub id that is neither cached nor reachable. Loads nothing."""
    from .gguf_source import check_gguf

    cfg = _plain(model_cfg)
    source = model_source(cfg)
    if source == "gguf":
        check_gguf(cfg.get("gguf") or {})
    if cfg.get("tokenizer"):
        check_pretrained_path(resolve_path(cfg["tokenizer"]), "tokenizer")
    if source == "hub":
        try:
            check_pretrained_path(resolve_path(cfg["name_or_path"]))
        except Exception as exc:
            if cfg.get("gguf") and "Hugging Face Hub" in str(exc):
                raise type(exc)(f"{exc}; or use model.source=gguf") from None
            raise


def pretrained_folder(model_cfg: Mapping[str, Any]) -> str:
    """What `from_pretrained` loads for a hub or gguf entry: name_or_path, or the converted GGUF folder."""
    cfg = _plain(model_cfg)
    if model_source(cfg) == "gguf":
        from .gguf_source import ensure_converted

        return str(ensure_converted(cfg.get("gguf") or {}))
    return resolve_path(cfg["name_or_path"])


def build_model(model_cfg: Mapping[str, Any], dtype: str | torch.dtype | None = None, seed: int = 0,
                device: str | torch.device | None = None, **from_pretrained_kwargs):
    """A causal LM from a model entry (see the module docstring); raises ModelSourceError on an unusable source."""
    from transformers import AutoModelForCausalLM

    cfg = _plain(model_cfg)
    dtype = torch_dtype(dtype or cfg.get("dtype", "float32"))
    if model_source(cfg) == "random":
        config = architecture_config(cfg)
        config.name_or_path = cfg.get("name_or_path") or cfg.get("name", "random")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if device is not None:
            model.to(device)
        return model
    if model_source(cfg) == "hub":  # a gguf source is checked by pretrained_folder (ensure_converted) itself
        check_model_source(cfg)
    model = AutoModelForCausalLM.from_pretrained(pretrained_folder(cfg), dtype=dtype, device_map=device,
                                                 **from_pretrained_kwargs)
    if model_source(cfg) == "gguf" and cfg.get("name_or_path"):
        model.config.name_or_path = cfg["name_or_path"]  # adapters record the model's name, not a cache path
    return model


def load_tokenizer(model_cfg: Mapping[str, Any] | str | Path):
    """The model entry's tokenizer (falls back to `name_or_path`), always with a pad token; the padding side is
    the tokenizer's own (generation callers set left padding themselves)."""
    from transformers import AutoTokenizer

    if isinstance(model_cfg, (str, Path)):
        source = str(model_cfg)
    else:
        cfg = _plain(model_cfg)
        source = cfg.get("tokenizer") or (pretrained_folder(cfg) if model_source(cfg) == "gguf" else cfg["name_or_path"])
    tok = AutoTokenizer.from_pretrained(resolve_path(source))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
