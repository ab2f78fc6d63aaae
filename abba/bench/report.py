"""Write the benchmark result as JSON (every figure) and Markdown (ratios against a baseline case)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..run_folder import write_atomic

MIB = 2**20


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.3f}" if reference else "n/a"


def model_table(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    ref = next((r for r in rows if r["case"] == baseline), None)
    lines = [f"| case | trainable params | step time, median (s) | min (s) | time / {baseline} | CPU time / {baseline} "
             f"| peak memory (MiB) | memory / {baseline} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['trainable_params']:,} | {r['median_s']:.3f} | {r['min_s']:.3f} "
                     f"| {_ratio(r['median_s'], ref and ref['median_s'])} "
                     f"| {_ratio(r['cpu_median_s'], ref and ref['cpu_median_s'])} | {r['peak_bytes'] / MIB:.1f} "
                     f"| {_ratio(r['peak_bytes'], ref and ref['peak_bytes'])} |")
    return lines


def layer_tables(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    lines: list[str] = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        group = [r for r in rows if r["shape"] == shape]
        ref = next((r for r in group if r["case"] == baseline), None)
        frozen = next((r for r in group if r["case"] == "frozen"), None)
        g0 = group[0]
        lines += ["", f"### {shape}: d_in {g0['d_in']} x d_out {g0['d_out']}, {g0['tokens']} tokens", "",
                  f"| case | fwd+bwd, median (ms) | / {baseline} | / frozen | CPU time / {baseline} | measured / floor "
                  f"| peak memory (MiB) | memory / {baseline} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            name = r["case"] + (f" ({r['forward_mode']})" if "forward_mode" in r else "")
            lines.append(f"| {name} | {1e3 * r['median_s']:.1f} | {_ratio(r['median_s'], ref and ref['median_s'])} "
                         f"| {_ratio(r['median_s'], frozen and frozen['median_s'])} "
                         f"| {_ratio(r['cpu_median_s'], ref and ref['cpu_median_s'])} | {r['measured_over_floor']:.2f} "
                         f"| {r['peak_bytes'] / MIB:.1f} | {_ratio(r['peak_bytes'], ref and ref['peak_bytes'])} |")
    return lines


def speedups(rows: list[dict[str, Any]], fast: str, slow: str) -> list[str]:
    lines = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by = {r["case"]: r for r in rows if r["shape"] == shape}
        if fast in by and slow in by and "frozen" in by:
            total = by[slow]["median_s"] / by[fast]["median_s"]
            f0 = by["frozen"]["median_s"]
            adapter = (by[slow]["median_s"] - f0) / max(by[fast]["median_s"] - f0, 1e-12)
            lines.append(f"- {shape}: {slow} / {fast} = {total:.2f}x for the whole layer, "
                         f"{adapter:.2f}x for the adapter's own time (frozen layer subtracted)")
    return lines


def markdown(result: dict[str, Any], baseline: str) -> str:
    m = result["machine"]
    ctx = result["model"]["context"]
    out = [f"# Adapter cost benchmark: {result['device']} ({result['dtype']}), {result['started_utc'][:10]}", "",
           f"Produced by `python -m abba.bench device={result['device']}{' quick=true' if result['quick'] else ''}`; "
           f"every figure is in the JSON file of the same name.", "",
           f"- machine: {m.get('cpu_model') or m.get('processor')}, {m.get('cpu_count')} CPUs, "
           f"torch threads {m.get('torch_threads')}" + (f", GPU {m['gpus'][0]}" if m.get("gpus") else ""),
           f"- load average before/after: {result['load_average']['before'][0]:.2f} / "
           f"{result['load_average']['after'][0]:.2f} (other jobs on the machine inflate and spread the timings)",
           f"- commit {result['git_commit']}, torch {result['packages'].get('torch')}, peft {result['packages'].get('peft')}",
           f"- time: {result['timing_method']}", f"- memory: {result['memory_method']}",
           f"- matmul peak for the floor: {result['gemm_peak'].get('used_flops_per_s', 0) / 1e9:.1f} GFLOP/s, the best of "
           f"a {result['gemm_peak']['size']}^3 matmul ({result['gemm_peak']['best_flops_per_s'] / 1e9:.1f}) and the "
           f"frozen layers' own throughput in this run",
           f"- merged inference: {result['merged_inference']}"]
    if result["model"]["cases"]:
        out += ["", "## Model level: one training step (forward, loss, backward, AdamW step)", "",
                f"{ctx['model']} shape cut to {ctx['num_hidden_layers']} layers (hidden {ctx['hidden_size']}, "
                f"MLP {ctx['intermediate_size']}, vocabulary {ctx['vocab_size']}, {ctx['total_params']:,} parameters), "
                f"random weights, batch {ctx['batch']} x seq {ctx['seq']}, adapters on {', '.join(ctx['target_modules'])}.", ""]
        out += model_table(result["model"]["cases"], baseline)
    if result["layer"]:
        out += ["", "## Layer level: forward + backward of one adapted linear layer (input gradient included)", "",
                "measured / floor = median time / (matmul FLOPs of the case at the GEMM peak above); "
                "the FLOP formulas are in abba/bench/flops.py."]
        out += layer_tables(result["layer"], baseline)
        lines = speedups(result["layer"], "abba_r16_khatri_rao", "loha_r16")
        if lines:
            out += ["", "### ABBA (Khatri-Rao, r1 = r2 = 16) against peft LoHa r = 16 (same parameter count)", ""] + lines
    return "\n".join(out) + "\n"


def write_report(result: dict[str, Any], out_dir: Path, stem: str, baseline: str) -> Path:
    """results/bench/<stem>.json and .md, each written atomically; returns the JSON path."""
    json_path = out_dir / f"{stem}.json"
    write_atomic(json_path, json.dumps(result, indent=1) + "\n")
    write_atomic(out_dir / f"{stem}.md", markdown(result, baseline))
    for path in (json_path, out_dir / f"{stem}.md"):
        path.chmod(0o644)  # the atomic writer's temporary file is private; results are for everyone to read
    return json_path
