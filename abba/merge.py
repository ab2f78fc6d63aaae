"""Fold a trained adapter into its base model and save a plain transformers model (loadable by vLLM).

    python -m abba.merge adapter_dir=outputs/smoke_arithmetic/seed0/final output_dir=merged/smoke
    python -m abba.merge adapter_dir=RUN/final output_dir=DIR base_model=meta-llama/Llama-3.2-1B dtype=bfloat16

Handles ABBA adapters (abba.load_abba_model), peft adapters (LoRA, rsLoRA, PiSSA, DoRA, HiRA, LoHa: peft's
PeftModel.from_pretrained) and full fine-tuning folders (re-saved). The base model is `base_model=` (a
configs/model name, a model-entry .yaml, or a Hub id / local folder), else RUN/final/abba_model.yaml (random-init
bases are rebuilt with the run's seed, read from RUN/config.yaml), else the adapter config's base model.

Everything is folded in float32 and cast once to the target dtype (`dtype=`, default the model entry's). Before
anything is written the merged model's logits on a probe batch are compared with the unmerged adapter model's;
NaN/inf or a difference above the dtype's tolerance stops the merge (exit code 1, nothing written). The folder is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import CONFIG_NAME
from .gguf_source import ModelSourceError
from .modeling import REPO_ROOT, build_model, check_model_source, load_tokenizer, resolve_path, torch_dtype

PROBE_TEXTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Janet has 16 eggs. She eats 3 and bakes with 4. The answer is: 9",
    "Please answer the following question with true or false.",
)
#: fp32: max |merged - unmerged| / max(1, max |unmerged|). Lower precisions: mean |cast - fp32| / mean |fp32|
#: (bf16 keeps 8 bits of mantissa, so a real model's logits move by a few percent).
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.02}


class MergeError(RuntimeError):
    """The merge was refused; the message is one line and nothing was written."""


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
    """The training seed: RUN/config.yaml beside RUN/final, else the ABBA config's seed, else 0."""
    run_config = adapter_dir.parent / "config.yaml"
    if run_config.is_file():
        seed = (yaml.safe_load(run_config.read_text()) or {}).get("seed")
        if seed is not None:
            return int(seed)
    if kind == "abba":
        return int(json.loads((adapter_dir / CONFIG_NAME).read_text()).get("seed", 0))
    return 0


def base_model_entry(adapter_dir: Path, base_model: str | None, kind: str) -> dict[str, Any]:
    """A model entry (the configs/model/*.yaml keys) describing the base to rebuild or load."""
    if base_model:
        named = REPO_ROOT / "configs" / "model" / f"{base_model}.yaml"
        if named.is_file():
            return yaml.safe_load(named.read_text())
        if str(base_model).endswith((".yaml", ".yml")) and Path(resolve_path(base_model)).is_file():
            return yaml.safe_load(Path(resolve_path(base_model)).read_text())
        return {"name_or_path": str(base_model), "random_init": False}
    if (adapter_dir / "abba_model.yaml").is_file():
        return yaml.safe_load((adapter_dir / "abba_model.yaml").read_text())
    if kind == "full":
        return {"name_or_path": str(adapter_dir), "random_init": False}
    name = json.loads((adapter_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path")
    if not name:
        raise MergeError(f"no base model known for {adapter_dir}: pass base_model=NAME_OR_PATH")
    return {"name_or_path": name, "random_init": False}


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


@torch.inference_mode()
def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits.float()


def _check_finite(logits: torch.Tensor, what: str) -> None:
    if not torch.isfinite(logits).all():
        raise MergeError(f"NaN or inf in the {what} logits on the probe batch: refusing to merge")


def merge(adapter_dir: str | Path, output_dir: str | Path, base_model: str | None = None, dtype: str | None = None,
          seed: int | None = None, overwrite: bool = False, device: str = "auto") -> dict[str, Any]:
    """Merge and save; return the record also written to DIR/merge_info.json. Raises MergeError on refusal."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.is_dir():
        raise MergeError(f"adapter_dir={adapter_dir} is not a folder")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise MergeError(f"output_dir={output_dir} already exists: pass overwrite=true or choose another folder")
    kind = adapter_kind(adapter_dir)
    entry = base_model_entry(adapter_dir, base_model, kind)
    seed = run_seed(adapter_dir, kind) if seed is None else int(seed)
    target = torch_dtype(dtype) if dtype else _entry_dtype(entry)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)

    try:
        check_model_source(entry)
    except ModelSourceError as error:
        raise MergeError(str(error)) from None
    tokenizer = _tokenizer(adapter_dir, entry)
    model = load_unmerged(adapter_dir, kind, entry, seed).to(device).eval()
    probe = {k: v.to(device) for k, v in tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True).items()}
    reference = _logits(model, probe)
    _check_finite(reference, "adapter model's")
    if kind == "full":
        merged = model
    else:
        try:
            merged = model.merge_and_unload(safe_merge=True)
        except ValueError as error:  # ABBA and peft both raise ValueError on NaN/inf updates
            raise MergeError(f"{str(error).splitlines()[0]}") from None
    for name, param in merged.named_parameters():
        if not torch.isfinite(param).all():
            raise MergeError(f"NaN or inf in merged parameter {name}: refusing to merge")
    fp32_logits = _logits(merged, probe)
    _check_finite(fp32_logits, "merged model's")
    max_abs_diff = (fp32_logits - reference).abs().max().item()
    scale = max(1.0, reference.abs().max().item())
    if max_abs_diff > TOLERANCE[torch.float32] * scale:
        raise MergeError(f"merged logits differ from the adapter model's by {max_abs_diff:.3g} "
                         f"(> {TOLERANCE[torch.float32] * scale:.3g}): refusing to merge")
    info: dict[str, Any] = {"adapter_dir": str(adapter_dir), "kind": kind, "base_model": entry.get("name_or_path"),
                            "random_init_seed": seed if entry.get("random_init") else None, "dtype": str(target),
                            "probe_max_abs_diff_fp32": max_abs_diff}
    if target != torch.float32:
        merged.to(target)
        cast_logits = _logits(merged, probe)
        _check_finite(cast_logits, f"merged {target} model's")
        relative = ((cast_logits - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)).item()
        info["probe_mean_relative_diff_cast"] = relative
        if relative > TOLERANCE.get(target, 0.1):
            raise MergeError(f"the merged model cast to {target} moves the probe logits by {relative:.3g} (relative, "
                             f"> {TOLERANCE.get(target, 0.1)}): refusing to save")
    _save(merged, tokenizer, output_dir, info, overwrite)
    return info


def _save(model, tokenizer, output_dir: Path, info: dict[str, Any], overwrite: bool) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.to("cpu")
        model.config.dtype = next(model.parameters()).dtype
        model.save_pretrained(str(tmp), max_shard_size="5GB")
        tokenizer.save_pretrained(str(tmp))
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if output_dir.exists() and overwrite:
            shutil.rmtree(output_dir)
        elif output_dir.exists():  # an empty folder (checked at the start)
            output_dir.rmdir()
        os.rename(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    known = {"adapter_dir", "output_dir", "base_model", "dtype", "seed", "overwrite", "device"}
    if "adapter_dir" not in args or "output_dir" not in args:
        print("usage: python -m abba.merge adapter_dir=RUN/final output_dir=DIR [base_model=...] [dtype=...] "
              "[seed=...] [overwrite=true] [device=cpu|cuda]", file=sys.stderr)
        return 2
    unknown = sorted(set(args) - known)
    if unknown:
        print(f"abba.merge: unknown option(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    try:
        info = merge(**args)
    except MergeError as error:
        print(f"abba.merge: {error}", file=sys.stderr)
        return 1
    print(f"merged {info['kind']} adapter {args['adapter_dir']} -> {args['output_dir']} ({info['dtype']}, "
          f"probe max |diff| {info['probe_max_abs_diff_fp32']:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
