"""Generation backends. Both take prompts + decoding parameters + stop strings and yield, batch by batch,
`(index, completion)` pairs, the completion cut at its first stop string.

    backend = make_backend("auto", model_path="merged/", batch_size=16)   # vllm on CUDA when installed, else hf
    for batch in backend.generate(prompts, decoding, stop, seed=42, keys=item_keys): ...

Sampling is per item: item i is sampled with its own random stream, seeded by `item_seed(seed, keys[i])`, so its
completion does not depend on the batch size, the order of the items or on resuming a killed run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

#: Version of the per-item seeding scheme; eval.run stores it with each sampled record, so files sampled under an
#: older scheme (one seed per batch) are generated again.
SAMPLING_SCHEME = "per-item-v1"


def item_seed(seed: int, key: str) -> int:
    """The sampling seed of one item: the first 63 bits of sha256("<seed>:<key>"), an int in [0, 2**63).
    `key` names the item (eval.run passes "<benchmark>/<id>"), so two items never share a stream."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


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
