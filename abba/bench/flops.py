"""Arithmetic floor of a layer case: the matmul FLOPs of one forward + backward, and the machine's GEMM peak.

Counts are for x (T x d_in) through a frozen d_out x d_in layer whose input gradient is needed (as for any
layer but the first), with the adapter's matmuls on top; elementwise work is left out. `dd` = d_in d_out.
  frozen        fwd 2 T dd, input grad 2 T dd                                       = 4 T dd
  LoRA r        + 6 T r (d_in + d_out)      (fwd 2, bwd: dL/dh, dL/dx, dA, dB: 4)
  DoRA r        + LoRA r + 2 r d_in (d_in + d_out)  (peft builds B A as B(A(I)) for the weight norm, detached)
  ABBA KR r1 r2 + 6 T r1 r2 (d_in + d_out)  (a rank-r1 r2 LoRA; building A*, B* is elementwise)
  ABBA dense    + 6 T dd + 8 (r1 + r2) dd   (apply dW, dL/dx, dL/ddW; build B1 A1, B2 A2 twice, 4 factor grads)
  LoHa r        + 6 T dd + 16 r dd          (the same with r1 = r2 = r)
  HiRA r        + 6 T dd + 6 r dd           (dW = W0 ⊙ B A: build B A once, 2 factor grads)
"""

from __future__ import annotations

import statistics
import time

import torch


def layer_flops(kind: str, tokens: int, d_in: int, d_out: int, r: int = 0, r2: int = 0, mode: str = "") -> float:
    T, dd, fan = tokens, d_in * d_out, d_in + d_out
    frozen = 4.0 * T * dd
    if kind == "frozen":
        return frozen
    if kind == "lora":
        return frozen + 6.0 * T * r * fan
    if kind == "dora":
        return frozen + 6.0 * T * r * fan + 2.0 * r * d_in * fan
    if kind == "abba":
        if mode == "khatri_rao":
            return frozen + 6.0 * T * r * r2 * fan
        return frozen + 6.0 * T * dd + 8.0 * (r + r2) * dd
    if kind == "loha":
        return frozen + 6.0 * T * dd + 16.0 * r * dd
    if kind == "hira":
        return frozen + 6.0 * T * dd + 6.0 * r * dd
    raise ValueError(f"no FLOP formula for adapter kind {kind!r}")


def gemm_peak_flops(device: str, dtype: torch.dtype, size: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a size^3 matmul (median and best of `repeats`), the reference for measured/floor."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {"size": size, "median_flops_per_s": flops / statistics.median(times), "best_flops_per_s": flops / min(times)}
