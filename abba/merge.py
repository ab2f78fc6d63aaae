"""Fold a trained adapter into its base model and save a plain transformers model (loadable by vLLM).

    python -m abba.merge adapter_dir=outputs/smoke_arithmetic/seed0/final output_dir=merged/smoke
    python -m abba.merge adapter_dir=RUN/final output_dir=DIR base_model=meta-llama/Llama-3.2-1B dtype=bfloat16

Handles ABBA adapters (abba.load_abba_model), peft adapters (LoRA, rsLoRA, PiSSA, DoRA, HiRA, LoHa: peft's
PeftModel.from_pretrained) and full fine-tuning folders (re-saved). The base model is `base_model=` (a
configs/model name, a model-entry .yaml, or a Hub id / local folder), else RUN/final/abba_model.yaml, else the
adapter config's base model. A random-init base is rebuilt with the training seed: `seed=`, else the `seed` of
RUN/final/abba_model.yaml, else the ABBA adapter config's, else 0. Only the input folder is read, nothing above it.

Everything is folded in float32 and cast once to the target dtype (`dtype=`, default the model entry's). Before
anything is written the merged model is checked (abba/merge_check.py: probe logits against the unmerged adapter
model's, and how much of each layer's update survives the cast, `update_survival` in merge_info.json); a refused
check exits 1 with nothing written. The folder is written under a temporary name and renamed when complete. An
ABBA layer whose weight is shared with another module (lm_head tied to the input embeddings) is merged into its
own copy, and the saved config is untied.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from .base_model import build_model, check_model_source, load_tokenizer, torch_dtype
from .cli import Refusal, UsageError, did_you_mean, first_line, one_line_errors, parse_bool, parse_key_values
from .config import CONFIG_NAME
from .files import atomic_path
from .gguf_source import ModelSourceError
from .layout import MERGE_INFO_FILE, MODEL_ENTRY_FILE, REPO_ROOT, resolve_path
from .merge_check import (MergeError, check_cast, check_finite, check_merged, initial_weights, logits, probe_batch,
                          tied_weights, update_survival, warn_lost_updates)

MODEL_CONFIGS = REPO_ROOT / "configs" / "model"


def adapter_kind(adapter_dir: Path) -> str:
    """'abba', 'peft' or 'full' from the files in the folder."""
    config = adapter_dir / CONFIG_NAME
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("adapter_type") == "abba":
            return "abba"
        if "peft_type" in data:
            return "peft"
        raise MergeError(f"{config} is neither an ABBA nor a peft adapter config")
    if (adapter_dir / "config.json").is_file():
        return "full"
    raise MergeError(f"{adapter_dir} holds no adapter_config.json or config.json: not an adapter or model folder")


def run_seed(adapter_dir: Path, kind: str) -> int:
    """The training seed: the `seed` of RUN/final/abba_model.yaml, else the ABBA config's seed, else 0."""
    entry_file = adapter_dir / MODEL_ENTRY_FILE
    if entry_file.is_file():
        seed = (yaml.safe_load(entry_file.read_text()) or {}).get("seed")
        if seed is not None:
            return int(seed)
    if kind == "abba":
        return int(json.loads((adapter_dir / CONFIG_NAME).read_text()).get("seed", 0))
    return 0


def base_model_entry(adapter_dir: Path, base_model: str | None, kind: str) -> dict[str, Any]:
    """A model entry (the configs/model/*.yaml keys) describing the base to rebuild or load."""
    if base_model:
        named = MODEL_CONFIGS / f"{base_model}.yaml"
        if named.is_file():
            return yaml.safe_load(named.read_text())
        if str(base_model).endswith((".yaml", ".yml")) and Path(resolve_path(base_model)).is_file():
            return yaml.safe_load(Path(resolve_path(base_model)).read_text())
        return {"name_or_path": str(base_model), "random_init": False}
    if (adapter_dir / MODEL_ENTRY_FILE).is_file():
        return yaml.safe_load((adapter_dir / MODEL_ENTRY_FILE).read_text())
    if kind == "full":
        return {"name_or_path": str(adapter_dir), "random_init": False}
    name = json.loads((adapter_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path")
    if not name:
        raise MergeError(f"no base model known for {adapter_dir}: pass base_model=NAME_OR_PATH")
    return {"name_or_path": name, "random_init": False}


def _available_base(adapter_dir: Path, base_model: str | None, kind: str) -> dict[str, Any]:
    """base_model_entry, checked loadable without loading it (check_model_source). Without base_model= and
    abba_model.yaml (a checkpoint-N folder, an exported adapter), a base that cannot be had is refused at once,
    naming base_model=: otherwise from_pretrained would try the Hub with retries and end in a traceback."""
    try:
        entry = base_model_entry(adapter_dir, base_model, kind)
        check_model_source(entry)
        return entry
    except (MergeError, ModelSourceError) as error:
        reason = first_line(error, type(error).__name__)
        if base_model or kind == "full" or (adapter_dir / MODEL_ENTRY_FILE).is_file():
            raise MergeError(reason) from None
        name = json.loads((adapter_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path")
        named = [p.stem for p in sorted(MODEL_CONFIGS.glob("*.yaml"))
                 if name and (yaml.safe_load(p.read_text()) or {}).get("name_or_path") == name]
        hint = (f"pass base_model={named[0]} (the configs/model entry of {name})" if len(named) == 1 else
                "pass base_model=NAME (a configs/model name, a model-entry .yaml, a local folder or a Hub id)")
        raise MergeError(f"{adapter_dir} has no {MODEL_ENTRY_FILE}, and the base model its adapter config names "
                         f"cannot be loaded ({reason.rstrip('.')}): {hint}") from None


def _entry_dtype(entry: dict[str, Any]) -> torch.dtype:
    """The entry's dtype; else a local model folder's saved dtype; else float32 (random init) / bfloat16."""
    if entry.get("dtype"):
        return torch_dtype(entry["dtype"])
    if entry.get("random_init") or entry.get("source") == "gguf":  # GGUF: dequantized to float32 (gguf_source.py)
        return torch.float32
    config = Path(resolve_path(entry["name_or_path"])) / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    saved_dtype = saved.get("dtype") or saved.get("torch_dtype")
    return torch_dtype(saved_dtype) if saved_dtype in ("float32", "bfloat16", "float16") else torch.bfloat16


def load_unmerged(adapter_dir: Path, kind: str, entry: dict[str, Any], seed: int) -> torch.nn.Module:
    """The adapter model in float32 (base built exactly as training built it, then upcast)."""
    if kind == "full":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32)
    base = build_model(entry, dtype=_entry_dtype(entry), seed=seed).float()
    if kind == "abba":
        from .model import load_abba_model

        return load_abba_model(base, adapter_dir)
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir))


def _tokenizer(adapter_dir: Path, entry: dict[str, Any]):
    if (adapter_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter_dir)
    return load_tokenizer(entry)


def merge(adapter_dir: str | Path, output_dir: str | Path, base_model: str | None = None, dtype: str | None = None,
          seed: int | None = None, overwrite: bool = False, device: str = "auto") -> dict[str, Any]:
    """Merge and save; return the record also written to DIR/merge_info.json. Raises MergeError on refusal."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.is_dir():
        raise MergeError(f"adapter_dir={adapter_dir} is not a folder: pass a training run's RUN/final (or "
                         f"RUN/checkpoint-N, or an exported adapter, with base_model=)")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise MergeError(f"output_dir={output_dir} already exists: pass overwrite=true or choose another folder")
    kind = adapter_kind(adapter_dir)
    entry = _available_base(adapter_dir, base_model, kind)
    seed = run_seed(adapter_dir, kind) if seed is None else int(seed)
    target = torch_dtype(dtype) if dtype else _entry_dtype(entry)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)

    tokenizer = _tokenizer(adapter_dir, entry)
    model = load_unmerged(adapter_dir, kind, entry, seed).to(device).eval()
    probe = probe_batch(tokenizer, device)
    reference = logits(model, probe)
    check_finite(reference, "adapter model's")
    tied = {} if kind == "full" else tied_weights(model)
    initial = {} if kind == "full" else initial_weights(model)
    if kind == "full":
        merged = model
    else:
        try:
            merged = model.merge_and_unload(safe_merge=True)
        except ValueError as error:  # ABBA and peft both raise ValueError on NaN/inf updates
            raise MergeError(f"{str(error).splitlines()[0]}") from None
    max_abs_diff = check_merged(merged, probe, reference, kind, tied)
    info: dict[str, Any] = {"adapter_dir": str(adapter_dir), "kind": kind, "base_model": entry.get("name_or_path"),
                            "random_init_seed": seed if entry.get("random_init") else None, "dtype": str(target),
                            "probe_max_abs_diff_fp32": max_abs_diff, "untied_weights": sorted(tied)}
    if kind != "full":
        info["update_survival"] = update_survival(merged, initial, target)
        del initial
        warn_lost_updates(info["update_survival"], target)
    if target != torch.float32:
        merged.to(target)
        info["probe_mean_relative_diff_cast"] = check_cast(merged, probe, reference, target)
    _save(merged, tokenizer, output_dir, info)
    return info


def _save(model, tokenizer, output_dir: Path, info: dict[str, Any]) -> None:
    """The merged model, its tokenizer and merge_info.json into `output_dir` (replaced whole, atomically)."""
    model.to("cpu")
    model.config.dtype = next(model.parameters()).dtype
    with atomic_path(output_dir, folder=True) as tmp:
        model.save_pretrained(str(tmp), max_shard_size="5GB")
        tokenizer.save_pretrained(str(tmp))
        (tmp / MERGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def summary(info: dict[str, Any], output_dir: str | Path) -> str:
    """The line the command prints after a merge."""
    return (f"merged {info['kind']} adapter {info['adapter_dir']} -> {output_dir} ({info['dtype']}, "
            f"probe max |diff| {info['probe_max_abs_diff_fp32']:.2e})")


USAGE = ("usage: python -m abba.merge adapter_dir=RUN/final output_dir=DIR [base_model=...] [dtype=...] [seed=...] "
         "[overwrite=true] [device=cpu|cuda]")
OPTIONS = ("adapter_dir", "output_dir", "base_model", "dtype", "seed", "overwrite", "device")


def parse_options(argv: list[str]) -> dict[str, Any]:
    """merge()'s keyword arguments from `key=value` arguments (only the keys given), values checked and typed.
    Raises UsageError (one line) for an unknown key, a malformed argument or a bad dtype, seed, overwrite or device."""
    from .base_model import DTYPES

    given = {k: v for k, v in parse_key_values(argv, dict.fromkeys(OPTIONS), USAGE).items() if v is not None}
    if "dtype" in given and given["dtype"] not in DTYPES:
        raise UsageError(f"dtype={given['dtype']} is not a dtype{did_you_mean(given['dtype'], DTYPES)}: use one of "
                         f"{', '.join(DTYPES)}")
    if "seed" in given:
        try:
            given["seed"] = int(given["seed"])
        except ValueError:
            raise UsageError(f"seed={given['seed']} is not an integer") from None
    if "overwrite" in given:
        given["overwrite"] = parse_bool("overwrite", given["overwrite"])
    if given.get("device", "auto") != "auto":
        try:
            torch.device(given["device"])
        except RuntimeError:
            raise UsageError(f"device={given['device']} is not a device: use auto, cpu, cuda or cuda:N") from None
    return given


def main(argv: list[str]) -> int:
    """The command line; failures print one line (abba/cli.py) and return 2 (usage) or 1 (refused)."""
    try:
        # OSError: from_pretrained on an unreadable folder; anything else is a bug and keeps its traceback.
        with one_line_errors(refusals=(Refusal, MergeError, ModelSourceError, OSError),
                             on_interrupt="interrupted: nothing was written (the merged model is saved under a "
                                          "temporary name and renamed only when complete): run the same command again"):
            args = parse_options(argv)
            missing = [k for k in ("adapter_dir", "output_dir") if not args.get(k)]
            if missing:
                raise UsageError(f"missing {' '.join(k + '=' for k in missing)}; {USAGE}")
            info = merge(**args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    print(summary(info, args["output_dir"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
