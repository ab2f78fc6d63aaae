"""The checks abba.merge runs on a merged model before anything is written: probe logits and update survival.

The merged model's logits on a probe batch are compared with the unmerged adapter model's: NaN/inf, or a
difference above the dtype's tolerance (TOLERANCE), refuses the merge (MergeError). The probe cannot see a small
update vanish in the cast to bf16 (its whole effect on the logits can be below the tolerance), so every adapted
layer is also measured: how much of its float32 update dW survives the cast (`update_survival`), with a
MergePrecisionWarning when a layer loses more than UPDATE_LOSS_WARN.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .data.templates import PREAMBLE
from .model import _shared_parameters

#: The probe batch: the Alpaca preamble every training prompt starts with, an arithmetic answer, a commonsense cue.
PROBE_TEXTS = (
    PREAMBLE,
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


def probe_batch(tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    """PROBE_TEXTS tokenized and padded into one batch on `device`."""
    return {k: v.to(device) for k, v in tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True).items()}


@torch.inference_mode()
def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits on `batch` in float32, (batch, tokens, vocabulary)."""
    return model(**batch).logits.float()


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise MergeError when `values` (logits named by `what`) hold NaN or inf."""
    if not torch.isfinite(values).all():
        raise MergeError(f"NaN or inf in the {what} logits on the probe batch: refusing to merge")


def tied_weights(model: torch.nn.Module) -> dict[str, list[str]]:
    """{merged weight name: the other names of its tensor} for the adapted layers whose weight another module
    shares (lm_head tied to the embeddings): ABBA's merge unties them; peft's writes into the shared tensor, which
    `check_merged` catches and names."""
    return {f"{name.removesuffix('.base_layer.weight')}.weight": others
            for name, others in _shared_parameters(model.get_base_model()).items()
            if name.endswith(".base_layer.weight")}


def initial_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name the merged weight will have: W0 as float32 on the CPU} for every adapted linear layer (ABBA and peft
    layers both keep W0 in `base_layer`). Costs one float32 copy of the adapted weights in host memory."""
    return {f"{name}.weight": module.base_layer.weight.detach().float().cpu().clone()
            for name, module in model.get_base_model().named_modules()
            if isinstance(getattr(module, "base_layer", None), torch.nn.Linear)}


def check_merged(merged: torch.nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor, kind: str,
                 tied: dict[str, list[str]]) -> float:
    """The merged float32 model against the adapter model's `reference` logits: returns max |merged - reference|;
    raises MergeError on a non-finite parameter or logit, or a difference above TOLERANCE[float32] (relative to
    max(1, max |reference|)), naming `tied` weights for a peft merge as the likely cause."""
    for name, param in merged.named_parameters():
        if not torch.isfinite(param).all():
            raise MergeError(f"NaN or inf in merged parameter {name}: refusing to merge")
    fp32_logits = logits(merged, probe)
    check_finite(fp32_logits, "merged model's")
    max_abs_diff = (fp32_logits - reference).abs().max().item()
    scale = max(1.0, reference.abs().max().item())
    if max_abs_diff > TOLERANCE[torch.float32] * scale:
        cause = "" if kind == "abba" or not tied else (
            "; the adapted weights " + ", ".join(f"{n} = {' = '.join(o)}" for n, o in sorted(tied.items()))
            + " are shared between modules, and the merge wrote the update into both")
        raise MergeError(f"merged logits differ from the adapter model's by {max_abs_diff:.3g} "
                         f"(> {TOLERANCE[torch.float32] * scale:.3g}): refusing to merge{cause}")
    return max_abs_diff


def check_cast(merged: torch.nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor,
               target: torch.dtype) -> float:
    """The merged model, already cast to `target`, against `reference`: returns mean |cast - reference| /
    mean |reference|; raises MergeError on NaN/inf or a value above TOLERANCE[target] (0.1 for other dtypes)."""
    cast_logits = logits(merged, probe)
    check_finite(cast_logits, f"merged {target} model's")
    relative = ((cast_logits - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)).item()
    if relative > TOLERANCE.get(target, 0.1):
        raise MergeError(f"the merged model cast to {target} moves the probe logits by {relative:.3g} (relative, "
                         f"> {TOLERANCE.get(target, 0.1)}): refusing to save")
    return relative


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


def warn_lost_updates(survival: dict[str, Any], target: torch.dtype) -> None:
    """A MergePrecisionWarning (pointing at merge()'s caller) when some layer loses more than UPDATE_LOSS_WARN."""
    if not survival["layers_over_threshold"]:
        return
    worst = survival["layers"][survival["worst_layer"]]
    warnings.warn(f"merging into {str(target).removeprefix('torch.')} loses more than "
                  f"{UPDATE_LOSS_WARN:.0%} of the update in {survival['layers_over_threshold']} of "
                  f"{len(survival['layers'])} layers (worst {survival['worst_layer']}: relative error "
                  f"{worst['relative_error']:.2f}, {worst['unchanged_fraction']:.0%} of its entries keep W0 "
                  f"exactly); merge with dtype=float32 to keep it", MergePrecisionWarning, stacklevel=3)
