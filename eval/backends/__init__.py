"""Generation backends. Both take prompts + decoding parameters + stop strings and yield, batch by batch,
`(index, completion)` pairs, the completion cut at its first stop string.

    backend = make_backend("auto", model_path="merged/", batch_size=16)   # vllm on CUDA when installed, else hf
    for batch in backend.generate(prompts, decoding, stop, seed=42): ...
"""

from __future__ import annotations

import importlib.util
from typing import Any


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


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
