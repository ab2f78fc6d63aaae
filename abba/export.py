"""Export an ABBA adapter as an exact, stock PEFT adapter (LoRA or LoHa), so other tools can load it.

    python -m abba.export adapter_dir=outputs/smoke_arithmetic/seed0/final format=lora output_dir=exported/lora
    python -m abba.export adapter_dir=RUN/final format=loha output_dir=exported/loha [overwrite=true]

    from abba.export import export_lora, export_loha
    export_lora(abba_model_or_adapter_dir, "exported/lora")
    model = peft.PeftModel.from_pretrained(base_model, "exported/lora")   # same outputs as the ABBA model

Both formats reproduce dW = s (B1 A1) ⊙ (B2 A2) exactly (up to float32 rounding):

* `lora`: the Khatri-Rao identity (B1 A1) ⊙ (B2 A2) = B* A* (paper v4, Sec. 2.3) makes ABBA a LoRA of rank r1 r2
  with lora_A = A* (rows A1[i] * A2[j]) and lora_B = s B* (columns B1[:, i] * B2[:, j]); lora_alpha = r1 r2, so
  peft's scaling lora_alpha / r is 1. The file is r1 r2 / (r1 + r2) times larger than the ABBA adapter.
* `loha`: peft's LoHa computes ((w1_a w1_b) ⊙ (w2_a w2_b)) alpha / r, the same product; it has one rank, so
  r1 == r2 is required. w1_a = s B1, w1_b = A1, w2_a = B2, w2_b = A2, alpha = r (scaling 1).

The files are peft's: adapter_config.json (written by peft's own config class) and adapter_model.safetensors
with peft's key names (`base_model.model.<module path>.lora_A.weight`, `...<module path>.hada_w1_a`). Only the
adapter files are read, so exporting a large model's adapter needs no base weights. ABBA's input dropout maps
to lora_dropout; LoHa has no input dropout (dropout only matters in training). The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import WEIGHTS_NAME, ABBAConfig
from .files import atomic_path
from .layer import khatri_rao_cols, khatri_rao_rows

FORMATS = ("lora", "loha")
FACTORS = ("abba_B1", "abba_A1", "abba_B2", "abba_A2")
PEFT_PREFIX = "base_model.model."  # what peft's save_pretrained puts before a module's path in the base model


class ExportError(RuntimeError):
    """The export was refused; the message is one line and nothing was written."""


def read_adapter(adapter_dir_or_model) -> tuple[ABBAConfig, dict[str, dict[str, torch.Tensor]]]:
    """(config, {module path: {'abba_B1': ..., ...}}) from an ABBA adapter folder or an ABBAModel."""
    if isinstance(adapter_dir_or_model, (str, Path)):
        adapter_dir = Path(adapter_dir_or_model)
        if not (adapter_dir / WEIGHTS_NAME).is_file():
            raise ExportError(f"no {WEIGHTS_NAME} in {adapter_dir}: not an ABBA adapter folder")
        try:
            config = ABBAConfig.load(adapter_dir)
        except (FileNotFoundError, ValueError) as error:
            raise ExportError(str(error).splitlines()[0]) from None
        state = load_file(str(adapter_dir / WEIGHTS_NAME))
    else:
        config, state = adapter_dir_or_model.abba_config, adapter_dir_or_model.adapter_state_dict()
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, name = key.rpartition(".")
        if name not in FACTORS:
            raise ExportError(f"unexpected tensor {key!r} in the ABBA adapter (expected only {FACTORS})")
        layers.setdefault(module, {})[name] = tensor.detach().to("cpu", torch.float64)
    incomplete = sorted(m for m, f in layers.items() if set(f) != set(FACTORS))
    if incomplete or not layers:
        raise ExportError(f"ABBA adapter has no or incomplete layers (need {FACTORS} each): {incomplete}")
    return config, layers


def lora_state(config: ABBAConfig, layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """peft LoRA tensors: lora_A = A* (r1 r2 x d_in), lora_B = s B* (d_out x r1 r2), computed in float64."""
    out = {}
    for module, f in layers.items():
        out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = khatri_rao_rows(f["abba_A1"], f["abba_A2"])
        out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = khatri_rao_cols(f["abba_B1"], f["abba_B2"]) * config.scale
    return _float32(out)


def loha_state(config: ABBAConfig, layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """peft LoHa tensors (Linear layers): hada_w1_a = s B1, hada_w1_b = A1, hada_w2_a = B2, hada_w2_b = A2."""
    if config.r1 != config.r2:
        raise ValueError(f"LoHa export needs r1 == r2 (peft's LoHa has one rank for both pairs), got r1={config.r1}, "
                         f"r2={config.r2}: export format=lora instead")
    out = {}
    for module, f in layers.items():
        out[f"{PEFT_PREFIX}{module}.hada_w1_a"] = f["abba_B1"] * config.scale
        out[f"{PEFT_PREFIX}{module}.hada_w1_b"] = f["abba_A1"]
        out[f"{PEFT_PREFIX}{module}.hada_w2_a"] = f["abba_B2"]
        out[f"{PEFT_PREFIX}{module}.hada_w2_b"] = f["abba_A2"]
    return _float32(out)


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


def peft_config(config: ABBAConfig, fmt: str):
    """The peft config object whose scaling is exactly 1, on ABBA's target modules and base model."""
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    common = dict(target_modules=targets, base_model_name_or_path=config.base_model_name_or_path,
                  task_type="CAUSAL_LM", inference_mode=True)
    if fmt == "lora":
        from peft import LoraConfig

        rank = config.r1 * config.r2
        return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=config.dropout, bias="none", **common)
    from peft import LoHaConfig

    return LoHaConfig(r=config.r1, alpha=config.r1, rank_dropout=0.0, module_dropout=0.0, **common)


def export(adapter_dir_or_model, output_dir: str | Path, format: str = "lora", overwrite: bool = False) -> Path:
    """Write the peft adapter folder; return its path. Raises ValueError for r1 != r2 with format='loha'."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ExportError(f"output_dir={output_dir} already exists: pass overwrite=true or choose another folder")
    config, layers = read_adapter(adapter_dir_or_model)
    state = lora_state(config, layers) if format == "lora" else loha_state(config, layers)
    peft_cfg = peft_config(config, format)

    with atomic_path(output_dir, folder=True) as tmp:
        peft_cfg.save_pretrained(str(tmp))  # peft's own adapter_config.json writer
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return output_dir


def export_lora(adapter_dir_or_model, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Exact peft LoRA adapter of rank r1 r2 (see the module docstring)."""
    return export(adapter_dir_or_model, output_dir, "lora", overwrite)


def export_loha(adapter_dir_or_model, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Exact peft LoHa adapter of rank r1 (= r2); raises ValueError when r1 != r2."""
    return export(adapter_dir_or_model, output_dir, "loha", overwrite)


def main(argv: list[str]) -> int:
    """The command line; failures print one line (abba/cli.py) and return 2 (usage) or 1 (refused)."""
    from .cli import one_line_errors

    try:
        with one_line_errors(refusals=(ExportError, ValueError, OSError),
                             on_interrupt="interrupted: nothing was written; run the same command again"):
            return _main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _main(argv: list[str]) -> int:
    from .cli import UsageError, did_you_mean, parse_bool, parse_key_values

    usage = "usage: python -m abba.export adapter_dir=DIR output_dir=DIR [format=lora|loha] [overwrite=true]"
    args = parse_key_values(argv, {"adapter_dir": "", "output_dir": "", "format": "lora", "overwrite": "false"}, usage)
    missing = [k for k in ("adapter_dir", "output_dir") if not args[k]]
    if missing:
        raise UsageError(f"missing {' '.join(k + '=' for k in missing)}; {usage}")
    fmt = args["format"]
    if fmt not in FORMATS:  # a bad value on the command line: exit 2, not a refusal
        raise UsageError(f"format={fmt} is not an export format{did_you_mean(fmt, FORMATS)}: use "
                         f"{' or '.join(FORMATS)}")
    overwrite = parse_bool("overwrite", args["overwrite"])
    if not Path(args["adapter_dir"]).is_dir():
        raise ExportError(f"adapter_dir={args['adapter_dir']} is not a folder: pass an ABBA adapter folder (a training "
                          f"run's RUN/final)")
    out = export(args["adapter_dir"], args["output_dir"], fmt, overwrite)
    print(f"exported ABBA adapter {args['adapter_dir']} as a peft {fmt} adapter -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
