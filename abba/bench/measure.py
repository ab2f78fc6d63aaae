"""Time and peak memory of a step function, the same way on CPU and CUDA.

Time: wall clock of one call (CUDA: synchronized before and after), repeated round-robin over all cases so
that machine drift (other jobs, clocks, caches) hits every case alike; the median of the repeats after warm-up
is the figure, the minimum and every sample are kept beside it.

Peak memory = bytes alive when the step starts (unique storages of the parameters, buffers, optimizer state
and inputs the case holds) + the highest rise of allocated bytes during the step:
* CUDA: torch.cuda.max_memory_allocated() - memory_allocated() at the start, after reset_peak_memory_stats();
* CPU: the running sum of the allocation/free events that torch.profiler(profile_memory=True) records from
  torch's CPU allocator. This sees every tensor torch allocates (tracemalloc does not: torch bypasses Python's
  allocator), and nothing else (no Python objects, no allocator slack); RSS would mix in both.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, Mapping

import torch
from tqdm import tqdm

Step = Callable[[], None]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_round_robin(steps: Mapping[str, Step], repeats: int, warmup: int, device: str,
                     desc: str = "timing", alternate: bool = False) -> dict[str, dict[str, float | list[float]]]:
    """{case: {"median_s", "min_s", "samples_s", "cpu_median_s", "cpu_samples_s"}}: each round runs every case
    once, in order (`alternate`: in reverse order every other round, so that no case always follows the same one).

    `cpu_median_s` is the process CPU time per step (all threads): on a CPU shared with other jobs it does not
    count the time the step waited for a core, so its ratios are steadier than wall-clock ones.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in tqdm(range(warmup + repeats), desc=desc, leave=False):
        order = list(steps.items())
        if alternate and round_index % 2:
            order.reverse()
        for name, step in order:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": s,
                   "cpu_median_s": statistics.median(cpu[name]), "cpu_samples_s": cpu[name]}
            for name, s in samples.items()}


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (shared or tied tensors count once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        seen[(t.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def module_state_tensors(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """Parameters, their gradients, buffers and optimizer state: what a training case keeps between steps."""
    tensors = list(module.parameters()) + [p.grad for p in module.parameters()] + list(module.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def _cpu_peak_rise(step: Step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return _peak_from_events(prof)


def _peak_from_events(prof) -> int:
    """The highest running sum of torch's CPU-allocator events recorded by a profile_memory=True profiler."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_step_bytes(step: Step, resident: Iterable[torch.Tensor | None], device: str) -> dict[str, int]:
    """{"peak_bytes", "resident_bytes", "step_rise_bytes"} for one call of `step` (see the module docstring)."""
    resident_bytes = tensor_bytes(resident)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        rise = torch.cuda.max_memory_allocated() - before
    else:
        rise = _cpu_peak_rise(step)
    return {"peak_bytes": resident_bytes + rise, "resident_bytes": resident_bytes, "step_rise_bytes": rise}


def profile_step(step: Step, resident: Iterable[torch.Tensor | None], device: str,
                 top: int = 20) -> tuple[dict[str, int], list[dict[str, float | int | str]]]:
    """peak_step_bytes's figures and torch.profiler's op table from ONE call of `step`.

    The op table: the `top` ops by self time (CPU time on CPU, device time on CUDA), each as {"op", "calls",
    "self_ms", "total_ms"}; profiler overhead is included, so it says where the time goes, not how long a step takes.
    """
    from torch.profiler import ProfilerActivity, profile

    resident_bytes = tensor_bytes(resident)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with profile(activities=activities, profile_memory=device != "cuda") as prof:
        step()
        synchronize(device)
    rise = torch.cuda.max_memory_allocated() - before if device == "cuda" else _peak_from_events(prof)
    self_key, total_key = (("self_device_time_total", "device_time_total") if device == "cuda"
                           else ("self_cpu_time_total", "cpu_time_total"))
    rows = [{"op": e.key, "calls": e.count, "self_ms": getattr(e, self_key) / 1e3, "total_ms": getattr(e, total_key) / 1e3}
            for e in prof.key_averages()]
    rows = sorted((r for r in rows if r["op"] != "[memory]"), key=lambda r: -r["self_ms"])
    memory = {"peak_bytes": resident_bytes + rise, "resident_bytes": resident_bytes, "step_rise_bytes": rise}
    return memory, rows[:top] if top else rows


MEMORY_METHOD = {
    "cuda": "resident bytes (parameters, grads, buffers, optimizer state, inputs) + "
            "torch.cuda.max_memory_allocated() rise during the step",
    "cpu": "resident bytes (parameters, grads, buffers, optimizer state, inputs) + peak rise of torch CPU-allocator "
           "bytes during the step, from torch.profiler(profile_memory=True) allocation events",
}
