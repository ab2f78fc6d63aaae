"""Attach ABBA adapters to a model, and save, load, merge and unload them.

    from abba import ABBAConfig, get_abba_model, load_abba_model
    model = get_abba_model(base_model, ABBAConfig(r1=16, r2=16, alpha=32))   # trainable adapter
    model.save_pretrained("out/adapter")                                    # adapter files only
    model = load_abba_model(base_model, "out/adapter")                      # restore it
    model.load_adapter("out/checkpoint-500")                                # overwrite it in place
    merged = model.merge_and_unload()                                       # plain transformers model
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_NAME, WEIGHTS_NAME, ABBAConfig
from .layer import ABBALinear

ADAPTER_PREFIX = "abba_"


def _is_target(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `model`, each shared tensor once; a ZeRO-3 partitioned parameter (empty on
    every rank) counts at its full size, `ds_numel`. The project's one parameter counter."""
    def numel(p: torch.Tensor) -> int:
        return getattr(p, "ds_numel", p.numel())

    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _shared_parameters(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """{parameter name: the other names holding the same memory}, for every weight shared between modules.

    Found by the memory itself, not by name lists, so every kind of sharing counts: tied input/output embeddings,
    one tensor or one module registered in two places.
    """
    def key(p: torch.Tensor):
        if p.device.type == "meta" or p.untyped_storage().nbytes() == 0:  # no memory to compare (meta, ZeRO-3): identity
            return id(p)
        return p.device, p.untyped_storage().data_ptr()

    groups: dict[Any, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(key(p), []).append(name)
    return {n: tuple(o for o in names if o != n) for names in groups.values() if len(names) > 1 for n in names}


def _record_untied(model: nn.Module, names: set[str]) -> None:
    """Tell transformers that the parameters `names` no longer share their tensor (merge_and_unload untied them).

    transformers re-ties by its tied-weights map, switched on by config.tie_word_embeddings (tie_weights(), and on
    reload, where the saved lm_head would be dropped or replaced by embed_tokens); clear both so they stay apart.
    """
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target in [t for t, s in tied.items() if t in names or s in names]:
        tied.pop(target)
    config = getattr(model, "config", None)
    if config is None or tied:  # other declared ties remain: the one switch would drop them too, so leave it
        return
    for cfg in (config, config.get_text_config() if hasattr(config, "get_text_config") else config):
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False


class ABBAModel(nn.Module):
    """A model whose targeted linear layers carry ABBA adapters. Attribute access falls through to `model`."""

    def __init__(self, model: nn.Module, config: ABBAConfig):
        super().__init__()
        self.model = model
        self.abba_config = config

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self.model

    def abba_layers(self) -> Iterator[tuple[str, ABBALinear]]:
        for name, module in self.model.named_modules():
            if isinstance(module, ABBALinear):
                yield name, module

    # ---------------------------------------------------------- parameters
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed by their path inside the base model (e.g. 'model.layers.0.mlp.up_proj.abba_A1')."""
        return {k: v for k, v in self.model.state_dict().items() if k.rsplit(".", 1)[-1].startswith(ADAPTER_PREFIX)}

    def trainable_parameter_count(self) -> tuple[int, int]:
        """(trainable, total) parameters of the wrapped model (see `parameter_counts`)."""
        return parameter_counts(self.model)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_count()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # --------------------------------------------------------------- merge
    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Fold every adapter into its base weight. safe_merge=True checks every update first, so a broken adapter
        leaves the whole model unmerged rather than half merged."""
        pending = [(name, layer) for name, layer in self.abba_layers() if not layer.merged]
        if not pending:
            warnings.warn("ABBA adapters are already merged; merging again would apply dW twice. Skipping.")
            return
        if safe_merge:
            for name, layer in pending:
                if not torch.isfinite(layer.get_delta_weight()).all():
                    raise ValueError(f"NaN or inf in the ABBA update of {name}: refusing to merge")
        for _, layer in pending:
            layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for _, layer in self.abba_layers():
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = True) -> nn.Module:
        """Fold every adapter into its base weight and return the plain model (the adapters are gone)."""
        layers = list(self.abba_layers())
        if not all(layer.merged for _, layer in layers):
            self.merge_adapter(safe_merge=safe_merge)
        for name, layer in layers:
            _set_submodule(self.model, name, layer.base_layer)
        untied = {f"{name}.weight" for name, layer in layers if layer._shared_base}
        if untied:
            _record_untied(self.model, untied)
        return self.model

    @contextmanager
    def disable_adapter(self):
        """Within the block the model computes with W0 alone (also when the adapter is merged)."""
        layers = [layer for _, layer in self.abba_layers()]
        was_merged = [layer.merged for layer in layers]
        for layer in layers:
            if layer.merged:
                layer.unmerge()
            layer.disabled = True
        try:
            yield self
        finally:
            for layer, merged in zip(layers, was_merged):
                layer.disabled = False
                if merged:
                    layer.merge()

    # ----------------------------------------------------------- save/load
    def save_pretrained(self, save_directory: str | Path, is_main_process: bool | None = None, **_ignored) -> None:
        """Write adapter_config.json and adapter_model.safetensors (adapter weights only, full shapes, their dtype).

        Under DeepSpeed ZeRO-3 each rank holds a slice of every partitioned factor and the parameter itself is
        empty (shape (0,)): the factors are gathered first, which is collective, so call this on every rank.
        Only `is_main_process` (default: rank 0, or True without torch.distributed) writes.
        Raises ValueError (one line) when a factor is partitioned but cannot be gathered (no process group), and
        before writing any empty tensor.
        """
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if is_main_process is None:
            is_main_process = not distributed or dist.get_rank() == 0
        partitioned = [p for n, p in self.model.named_parameters()
                       if n.rsplit(".", 1)[-1].startswith(ADAPTER_PREFIX) and hasattr(p, "ds_id")]
        if partitioned and not distributed:
            raise ValueError("the ABBA factors are partitioned by DeepSpeed ZeRO-3 and no process group is "
                             "initialised to gather them: call save_pretrained on every rank of the training job")
        with _gathered(partitioned):
            state = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.adapter_state_dict().items()}
        if not is_main_process:
            return
        empty = sorted(k for k, v in state.items() if v.numel() == 0)
        if empty:  # a partitioned tensor that was not gathered: refuse rather than write a file that cannot load
            raise ValueError(f"refusing to save {len(empty)} empty adapter tensors ({empty[0]}, ...): they are "
                             "partitioned (DeepSpeed ZeRO-3); call save_pretrained on every rank so it gathers them")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.abba_config
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(getattr(self.model, "config", None), "name_or_path", None) or None
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "adapter_type": "abba"})
        config.save(out)

    def load_adapter(self, adapter_dir: str | Path) -> None:
        """Overwrite this model's adapter in place with the tensors saved in `adapter_dir`/adapter_model.safetensors
        (same layers, same shapes; cast to the factors' dtype). Under DeepSpeed ZeRO-3 the partitioned factors are
        gathered, overwritten and partitioned again, which is collective: call it on every rank. (An optimizer's own
        copies of the factors, as DeepSpeed's keeps, are not changed: load before it is created.)
        Raises FileNotFoundError (no weights file), KeyError (missing or unexpected keys), ValueError (shapes)."""
        weights = Path(adapter_dir) / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {adapter_dir}")
        saved = load_file(str(weights))
        params = {n: p for n, p in self.model.named_parameters() if n.rsplit(".", 1)[-1].startswith(ADAPTER_PREFIX)}
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        if missing or unexpected:
            raise KeyError(f"adapter in {adapter_dir} does not fit the model: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        bad = [f"{k}: saved {tuple(saved[k].shape)} vs model {tuple(getattr(p, 'ds_shape', p.shape))}"
               for k, p in params.items() if saved[k].shape != getattr(p, "ds_shape", p.shape)]
        if bad:
            raise ValueError(f"adapter in {adapter_dir} has mismatched shapes: {bad}")
        # Every rank reads the same file; rank 0's copy is what ZeRO-3 partitions again on leaving the block.
        with _gathered([p for p in params.values() if hasattr(p, "ds_id")], modifier_rank=0), torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


@contextmanager
def _gathered(params: list[torch.Tensor], modifier_rank: int | None = None):
    """Full ZeRO-3 parameters inside the block (collective over all ranks); a no-op for an empty list. With
    `modifier_rank`, that rank's changes are partitioned back on leaving it (None: read only)."""
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def get_abba_model(model: nn.Module, config: ABBAConfig, init: bool = True) -> ABBAModel:
    """Replace every targeted nn.Linear of `model` by an ABBALinear, freeze the rest, and wrap it.

    `init=False` skips the (SVD) initialisation, for loading saved weights into the layers.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _is_target(n, config.target_modules)]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no nn.Linear in {type(model).__name__}; "
            f"its linear layers are named {linear}"
        )
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    for p in model.parameters():
        p.requires_grad_(False)
    shared = _shared_parameters(model)
    for index, name in enumerate(names):
        base = model.get_submodule(name)
        layer = ABBALinear(base, config, init_seed=config.seed * 1_000_003 + index if init else None)
        layer.shared_with = shared.get(f"{name}.weight", ())
        if layer.shared_with:
            others = ", ".join(layer.shared_with)
            warnings.warn(f"ABBA target {name}: its weight is shared with {others} (tied weights). Merging unties "
                          f"them: {name} gets its own copy of W0 + dW, {others} keeps W0.", stacklevel=2)
        _set_submodule(model, name, layer)
    return ABBAModel(model, config)


def load_abba_model(base_model: nn.Module | str, adapter_dir: str | Path, **from_pretrained_kwargs) -> ABBAModel:
    """Restore a saved ABBA adapter onto `base_model` (a model, or a name/path for AutoModelForCausalLM)."""
    adapter_dir = Path(adapter_dir)
    config = ABBAConfig.load(adapter_dir)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {adapter_dir}")
    if isinstance(base_model, (str, Path)):
        from transformers import AutoModelForCausalLM

        base_model = AutoModelForCausalLM.from_pretrained(str(base_model), **from_pretrained_kwargs)
    model = get_abba_model(base_model, config, init=False)
    model.load_adapter(adapter_dir)
    return model


__all__ = ["ABBAModel", "get_abba_model", "load_abba_model", "parameter_counts", "CONFIG_NAME", "WEIGHTS_NAME"]
