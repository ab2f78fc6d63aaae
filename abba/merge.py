"""Fold a trained adapter into its base model and save a plain transformers model (loadable by vLLM).

    python -m abba.merge adapter_dir=outputs/smoke_arithmetic/seed0/final output_dir=merged/smoke
    python -m abba.merge adapter_dir=RUN/final output_dir=DIR base_model=meta-llama/Llama-3.2-1B dtype=bfloat16

Handles ABBA adapters (abba.load_abba_model), peft adapters (LoRA, rsLoRA, PiSSA, DoRA, HiRA, LoHa: peft's
PeftModel.from_pretrained) and full fine-tuning folders (re-saved). The base model is `base_model=` (a
configs/model name, a model-entry .yaml, or a Hub id / local folder), else RUN/final/abba_model.yaml (random-init
bases are rebuilt with the run's seed, read from RUN/config.yaml), else the adapter config's base model.

Everything is folded in float32 and cast once to the target dtype (`dtype=`, default the model entry's). Before
anything is written the merged model's logits on a probe batch are compared with the unmerged adapter model's;
NaN/inf or a difference above the dtype's tolerance stops the merge (exit code 1, nothing written). The probe
cannot see a small update vanish in the cast (its whole effect on the logits can be below the tolerance), so every
adapted layer is also measured: how much of its float32 update dW survives the cast (`update_survival` in
merge_info.json), with a MergePrecisionWarning when a layer loses more than UPDATE_LOSS_WARN. The folder is
written under a temporary name and renamed when complete. An ABBA layer whose weight is shared with another module
(lm_head tied to the input embeddings) is merged into its own copy, and the saved config is untied.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import CONFIG_NAME
from .gguf_source import ModelSourceError
from .layout import REPO_ROOT, resolve_path
from .base_model import build_model, check_model_source, load_tokenizer, torch_dtype
from .model import _shared_parameters

PROBE_TEXTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Janet has 16 eggs. She eats 3 and bakes with 4. The answer is: 9",
    "Please answer the following question with true or false.",
)
#: fp32: max |merged - unmerged| / max(1, max |unmerged|). Lower precisions: mean |cast - fp32| / mean |fp32|
#: (bf16 keeps 8 bits of mantissa, so a real model's logits move by a few percent).
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.02}


#: A layer whose update, after the cast, is off by more than this fraction of its norm gets a MergePrecisionWarning.
#: bf16 keeps 8 significant bits: an update near W0's rounding step (2**-9 of |W0| per entry) is mostly rounded away.
UPDATE_LOSS_WARN = 0.1


class MergePrecisionWarning(UserWarning):
    """The cast to the output dtype loses more than UPDATE_LOSS_WARN of some layer's update."""


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


def _initial_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name the merged weight will have: W0 as float32 on the CPU} for every adapted linear layer (ABBA and peft
    layers both keep W0 in `base_layer`). Costs one float32 copy of the adapted weights in host memory."""
    return {f"{name}.weight": module.base_layer.weight.detach().float().cpu().clone()
            for name, module in model.get_base_model().named_modules()
            if isinstance(getattr(module, "base_layer", None), torch.nn.Linear)}


def update_survival(merged: torch.nn.Module, initial: dict[str, torch.Tensor], target: torch.dtype) -> dict[str, Any]:
    """How much of each layer's update survives the cast of the merged weight to `target`.

    dW = W - W0 is the float32 update the merge folded in (W: the merged float32 weight); what the saved model
    applies is cast(W) - cast(W0). Per layer: `relative_error` = ||(cast(W) - cast(W0)) - dW||_F / ||dW||_F (0: all
    of it survives; 1: as if there were none) and `unchanged_fraction` = the fraction of entries with dW != 0 whose
    cast weight equals cast(W0) exactly. Both are 0 for target float32. Returns the threshold, the worst layer and
    {layer weight name: {relative_error, unchanged_fraction}}."""
    params = dict(merged.named_parameters())
    layers: dict[str, dict[str, float]] = {}
    for name, w0 in initial.items():
        w = params[name].detach().float().cpu()
        dw = w - w0
        w_cast, w0_cast = w.to(target), w0.to(target)
        delivered = w_cast.float() - w0_cast.float()
        norm = dw.double().norm().item()
        changed = dw != 0
        layers[name] = {
            "relative_error": (delivered - dw).double().norm().item() / norm if norm > 0 else 0.0,
            "unchanged_fraction": ((w_cast == w0_cast) & changed).sum().item() / max(1, changed.sum().item()),
        }
    worst = max(layers, key=lambda n: layers[n]["relative_error"], default=None)
    return {"threshold": UPDATE_LOSS_WARN, "worst_layer": worst,
            "max_relative_error": layers[worst]["relative_error"] if worst else 0.0,
            "layers_over_threshold": sum(v["relative_error"] > UPDATE_LOSS_WARN for v in layers.values()),
            "layers": layers}


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
    # Adapted layers whose weight another module shares (lm_head tied to the embeddings): ABBA's merge unties them;
    # peft's writes into the shared tensor, which the logit check below catches and names.
    tied = {} if kind == "full" else {
        f"{name.removesuffix('.base_layer.weight')}.weight": others
        for name, others in _shared_parameters(model.get_base_model()).items() if name.endswith(".base_layer.weight")}
    initial = {} if kind == "full" else _initial_weights(model)
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
        cause = "" if kind == "abba" or not tied else (
            "; the adapted weights " + ", ".join(f"{n} = {' = '.join(o)}" for n, o in sorted(tied.items()))
            + " are shared between modules, and the merge wrote the update into both")
        raise MergeError(f"merged logits differ from the adapter model's by {max_abs_diff:.3g} "
                         f"(> {TOLERANCE[torch.float32] * scale:.3g}): refusing to merge{cause}")
    info: dict[str, Any] = {"adapter_dir": str(adapter_dir), "kind": kind, "base_model": entry.get("name_or_path"),
                            "random_init_seed": seed if entry.get("random_init") else None, "dtype": str(target),
                            "probe_max_abs_diff_fp32": max_abs_diff, "untied_weights": sorted(tied)}
    if kind != "full":
        survival = update_survival(merged, initial, target)
        del initial
        info["update_survival"] = survival
        if survival["layers_over_threshold"]:
            worst = survival["layers"][survival["worst_layer"]]
            warnings.warn(f"merging into {str(target).removeprefix('torch.')} loses more than "
                          f"{UPDATE_LOSS_WARN:.0%} of the update in {survival['layers_over_threshold']} of "
                          f"{len(survival['layers'])} layers (worst {survival['worst_layer']}: relative error "
                          f"{worst['relative_error']:.2f}, {worst['unchanged_fraction']:.0%} of its entries keep W0 "
                          f"exactly); merge with dtype=float32 to keep it", MergePrecisionWarning, stacklevel=2)
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


USAGE = ("usage: python -m abba.merge adapter_dir=RUN/final output_dir=DIR [base_model=...] [dtype=...] [seed=...] "
         "[overwrite=true] [device=cpu|cuda]")


def _check_base_model(adapter_dir: Path, base_model: str | None) -> None:
    """Refuse at once, naming base_model=, when no base_model= is given and the base model named by the adapter's
    own config (a checkpoint-N folder or an exported adapter has no abba_model.yaml) cannot be had: otherwise
    from_pretrained would try the Hub with retries and end in a traceback."""
    from .cli import Refusal

    if base_model or not adapter_dir.is_dir() or (adapter_dir / "abba_model.yaml").is_file():
        return
    try:
        kind = adapter_kind(adapter_dir)
        if kind == "full":
            return
        entry = base_model_entry(adapter_dir, None, kind)
        check_model_source(entry)
    except (MergeError, ModelSourceError) as error:
        run_config = adapter_dir.parent / "config.yaml"  # RUN/checkpoint-N beside RUN/config.yaml
        model = ((yaml.safe_load(run_config.read_text()) or {}).get("model") or {}) if run_config.is_file() else {}
        named = model.get("name") if (REPO_ROOT / "configs" / "model" / f"{model.get('name')}.yaml").is_file() else None
        hint = (f"pass base_model={named} (the model in {run_config})" if named else
                "pass base_model=NAME (a configs/model name, a model-entry .yaml, a local folder or a Hub id)")
        raise Refusal(f"{adapter_dir} has no abba_model.yaml, and the base model its adapter config names cannot be "
                      f"loaded ({str(error).rstrip('.')}): {hint}") from None


def _main(argv: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from .cli import UsageError, did_you_mean, unknown_options

    try:
        args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    except Exception as error:  # noqa: BLE001 - a malformed key=value: say which, in one line
        raise UsageError(f"{str(error).splitlines()[0]}; {USAGE}") from None
    unknown_options(args, ("adapter_dir", "output_dir", "base_model", "dtype", "seed", "overwrite", "device"), USAGE)
    missing = [k for k in ("adapter_dir", "output_dir") if args.get(k) in (None, "")]
    if missing:
        raise UsageError(f"missing {' '.join(k + '=' for k in missing)}; {USAGE}")
    if args.get("dtype") is not None:
        from .base_model import DTYPES

        if str(args["dtype"]) not in DTYPES:
            raise UsageError(f"dtype={args['dtype']} is not a dtype{did_you_mean(args['dtype'], DTYPES)}: use one of "
                             f"{', '.join(DTYPES)}")
    if args.get("seed") is not None and not isinstance(args["seed"], int):
        raise UsageError(f"seed={args['seed']} is not an integer")
    if args.get("device", "auto") != "auto":
        try:
            torch.device(str(args["device"]))
        except RuntimeError:
            raise UsageError(f"device={args['device']} is not a device: use auto, cpu, cuda or cuda:N") from None
    adapter_dir = Path(str(args["adapter_dir"]))
    if not adapter_dir.is_dir():
        from .cli import Refusal

        raise Refusal(f"adapter_dir={adapter_dir} is not a folder: pass a training run's RUN/final (or "
                      f"RUN/checkpoint-N, or an exported adapter, with base_model=)")
    _check_base_model(adapter_dir, args.get("base_model"))
    return merge(**args)


def main(argv: list[str]) -> int:
    """The command line; failures print one line (abba/cli.py) and return 2 (usage) or 1 (refused)."""
    from .cli import Refusal, one_line_errors

    try:
        # OSError: from_pretrained on an unreadable folder; anything else is a bug and keeps its traceback.
        with one_line_errors(refusals=(Refusal, MergeError, ModelSourceError, OSError),
                             on_interrupt="interrupted: nothing was written (the merged model is saved under a "
                                          "temporary name and renamed only when complete): run the same command again"):
            info = _main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    print(f"merged {info['kind']} adapter {info['adapter_dir']} -> {argv_value(argv, 'output_dir')} ({info['dtype']}, "
          f"probe max |diff| {info['probe_max_abs_diff_fp32']:.2e})")
    return 0


def argv_value(argv: list[str], key: str) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")), "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
