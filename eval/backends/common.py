"""What every generation backend shares (eval.backends re-exports it): the per-item sampling seed and the cut at
the first stop string. A module of its own, so that hf.py and vllm.py, which the package imports, import nothing
back from the package."""

from __future__ import annotations

import hashlib

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
