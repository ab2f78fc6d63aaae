"""Generation backends. Both take prompts + decoding parameters + stop strings and yield, batch by batch,
`(index, completion)` pairs, the completion cut at its first stop string.

    backend = make_backend("auto", model_path="merged/", batch_size=16)   # vllm on CUDA when installed, else hf
    for batch in backend.generate(prompts, decoding, stop, seed=42, keys=item_keys): ...

Sampling is per item: item i is sampled with its own random stream, seeded by `item_seed(seed, keys[i])`, so its
completion does not depend on the batch size, the order of the items or on resuming a killed run.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .common import SAMPLING_SCHEME, item_seed, truncate_at_stop  # noqa: F401 - the package's names


def choose_backend(name: str) -> str:
    if name == "auto":
        import torch

        return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"
    if name not in ("hf", "vllm"):
        raise ValueError(f"unknown backend {name!r}; use auto, hf or vllm")
    return name


def make_backend(name: str, model_path: str, **options: Any):
    """Options: batch_size, dtype, device (hf); tensor_parallel_size, gpu_memory_utilization, max_model_len,
    dtype, seed (vllm). Options a backend does not use are ignored."""
    name = choose_backend(name)
    if name == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(model_path, **options)
    from .hf import HFBackend

    return HFBackend(model_path, **options)
