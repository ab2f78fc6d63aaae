"""Write the benchmark result as JSON (every figure) and Markdown (ratios against a baseline case)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_text

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
           f"Produced by `{result.get('command') or 'python -m abba.bench device=' + result['device'] + (' quick=true' if result['quick'] else '')}`; "
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


def _mib(x: float) -> str:
    return f"{x / MIB:.1f}"


def header_lines(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    return [f"- machine: {m.get('cpu_model') or m.get('processor')}, {m.get('cpu_count')} CPUs, "
            f"torch threads {m.get('torch_threads')}" + (f", GPU {m['gpus'][0]}" if m.get("gpus") else ""),
            f"- load average (1 min) before/after: {result['load_average']['before'][0]:.2f} / "
            f"{result['load_average']['after'][0]:.2f} (other jobs on the machine inflate and spread the timings)",
            f"- commit {result['git_commit']}, torch {result['packages'].get('torch')}, transformers "
            f"{result['packages'].get('transformers')}, peft {result['packages'].get('peft')}"]


def smollm2_markdown(result: dict[str, Any], baseline: str = "") -> str:
    """The report of `parts=[smollm2]`: a real model's training step, ABBA against LoRA, per precision."""
    sec = result["smollm2"]
    ctx, rows, ratios, prof = sec["context"], sec["rows"], sec["ratios"], sec["profile"]
    baseline = ctx["baseline_case"]
    settings = result["settings"]
    weights = ("random weights" if ctx["random_init"] else
               f"pretrained weights from {ctx['gguf']['file']} ({ctx['gguf'].get('package')} "
               f"{ctx['gguf'].get('package_version')}), dequantized to float32" if ctx.get("source") == "gguf"
               else f"pretrained weights from {ctx['name_or_path']}")
    specs = "; ".join(", ".join(f"{k} {v}" for k, v in c.items()) for c in ctx["cases"])
    modes = sorted({m for r in rows for m in r.get("forward_modes", [])})
    out = [f"# ABBA vs LoRA training step on a real model: {ctx['model']}, {result['device']}, "
           f"{result['started_utc'][:10]}", "",
           f"Produced by `{result['command']}`; every figure (all timing samples, the profiles) is in the JSON file "
           f"of the same name.", "", *header_lines(result),
           f"- model: {ctx['name_or_path']} ({ctx['num_hidden_layers']} layers, hidden {ctx['hidden_size']}, MLP "
           f"{ctx['intermediate_size']}, vocabulary {ctx['vocab_size']}, {ctx['total_params']:,} parameters, "
           f"{ctx['weights_dtype']}), {weights}",
           f"- adapters ({specs}) on {', '.join(ctx['target_modules'])}, attached by abba.methods.apply_method as "
           f"training does" + (f"; ABBA forward: {', '.join(modes)}" if modes else ""),
           f"- batch: {ctx['batch']} records drawn at random (seed {settings['seed']}) from "
           f"{', '.join(ctx['data_files'])}, formatted and tokenized as training does (abba.data.tokenize, "
           f"max_length {ctx['max_length']}), padded ({ctx['padding_side']}) to the longest by DataCollatorForSeq2Seq: "
           f"{ctx['batch']} x {ctx['seq']} = {ctx['padded_tokens']:,} positions, {ctx['non_pad_tokens']:,} non-pad "
           f"tokens (what tokens/s counts), {ctx['loss_tokens']:,} loss tokens; per-record lengths "
           f"{min(ctx['lengths'])}-{max(ctx['lengths'])}",
           f"- step: zero_grad, forward with labels, backward, AdamW step (lr {ctx['lr']}); float32 = float32 "
           f"throughout; bf16_autocast = float32 weights under torch.autocast(bfloat16), as trainer.bf16=true",
           f"- time: {result['timing_method']}",
           f"- memory: {result['memory_method']}", ""]
    out += ["## Per step", "",
            "| precision | case | trainable params | step time, median (s) | min (s) | CPU time, median (s) "
            "| tokens/s (non-pad) | peak memory (MiB) | of which step rise (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['precision']} | {r['method']} | {r['trainable_params']:,} | {r['median_s']:.3f} "
                   f"| {r['min_s']:.3f} | {r['cpu_median_s']:.3f} | {r['tokens_per_s']:.1f} | {_mib(r['peak_bytes'])} "
                   f"| {_mib(r['step_rise_bytes'])} |")
    out += ["", f"## Ratios against {baseline} (same precision)", "",
            "time, paired = median over rounds of (case step / baseline step), the two run back to back; "
            "matmul FLOPs = the arithmetic of flops.py's formulas over the whole step (adapted projections with "
            "their input gradient, lm_head, attention), the ratio a perfect implementation would show.", "",
            "| precision | case | time, paired median | time, ratio of medians | time, ratio of mins | CPU time "
            "| tokens/s | peak memory | step rise | matmul FLOPs | time <= target |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for q in ratios:
        out.append(f"| {q['precision']} | {q['case']} | {q['time_ratio_paired_median']:.3f} "
                   f"| {q['time_ratio_of_medians']:.3f} | {q['time_ratio_of_mins']:.3f} "
                   f"| {q['cpu_time_ratio_paired_median']:.3f} | {q['tokens_per_s_ratio']:.3f} "
                   f"| {q['peak_memory_ratio']:.3f} | {q['step_rise_ratio']:.3f} | {q['matmul_flops_ratio']:.3f} "
                   f"| {'yes' if q['meets_target'] else 'no'} ({q['target_time_ratio']}) |")
    above = [q for q in ratios if not q["meets_target"]]
    out += [""]
    by = {(r["method"], r["precision"]): r for r in rows}
    for q in ratios:
        others = {"ratio of minimum times": q["time_ratio_of_mins"], "CPU-time ratio": q["cpu_time_ratio_paired_median"],
                  "largest per-round ratio": max(q["time_ratio_paired"])}
        over = [f"{k} {v:.3f}" for k, v in others.items() if v > q["target_time_ratio"]]
        if q["meets_target"] and over:
            out.append(f"- caution, {q['precision']}: the paired median meets the target but the {', '.join(over)} "
                       f"do not: on this loaded machine the figures are within the spread of the rounds, not tighter")
    if "float32" in ctx["precisions"] and "bf16_autocast" in ctx["precisions"]:
        speed = ", ".join(f"{c['name']} {by[(c['name'], 'bf16_autocast')]['median_s'] / by[(c['name'], 'float32')]['median_s']:.3f}"
                          for c in ctx["cases"])
        out.append(f"- bf16 autocast / float32 step time (median): {speed}")
    for q in ratios:
        paired = ", ".join(f"{x:.3f}" for x in q["time_ratio_paired"])
        out.append(f"- {q['precision']}: {q['case']} / {q['baseline']} per round: {paired}")
    out += ["", "## Where the time goes (torch.profiler)", "",
            (f"The time ratio is above the target {above[0]['target_time_ratio']} for "
             f"{', '.join(q['precision'] for q in above)}: the tables below compare the two adapters' ops. "
             if above else "The time ratio meets the target in every precision; the profiles are kept for reference. ")
            + prof["method"] + ". Times are summed over the step's calls of each op.", ""]
    out += ["The profiler's op times are wall clock: on a loaded machine an op that waited for a core looks slow, so "
            "a difference in an op both adapters run alike (the loss's log_softmax, attention) measures the load, "
            "not the adapter. The ops only one adapter runs are its own cost.", ""]
    top = ctx["profile_top"]
    for q in ratios:
        case, ref = f"{q['case']}/{q['precision']}", f"{q['baseline']}/{q['precision']}"
        totals = prof["step_self_ms"]
        for name, other in ((case, ref), (ref, case)):
            if prof.get("ops_complete"):
                theirs = {o["op"] for o in prof["ops"][other]}
                own, where = [o for o in prof["ops"][name] if o["op"] not in theirs], ""
            else:  # a report whose JSON keeps the top ops only: the differences were taken over every op
                mine, them = ("case", "baseline") if name == case else ("baseline", "case")
                own = [{"op": d["op"], "self_ms": d[f"{mine}_self_ms"]} for d in prof["differences"][case]
                       if d[f"{them}_calls"] == 0 and d[f"{mine}_calls"] > 0]
                where = f" (among the {len(prof['differences'][case])} largest differences)"
            if own:
                listed = ", ".join(f"`{o['op']}` {o['self_ms']:.0f} ms" for o in own[:6])
                out.append(f"- {q['precision']}: ops only {name.split('/')[0]} runs{where}: "
                           f"{sum(o['self_ms'] for o in own):.0f} ms of its {totals[name]:.0f} ms ({listed})")
        out.append("")
        out += [f"### {q['precision']}: ops whose self time differs most ({q['case']} minus {q['baseline']})", "",
                f"| op | {q['case']} calls | {q['case']} self (ms) | {q['baseline']} calls | {q['baseline']} self (ms) "
                f"| difference (ms) |", "|---|---:|---:|---:|---:|---:|"]
        for d in prof["differences"][case]:
            out.append(f"| `{d['op']}` | {d['case_calls']} | {d['case_self_ms']:.1f} | {d['baseline_calls']} "
                       f"| {d['baseline_self_ms']:.1f} | {d['diff_ms']:+.1f} |")
        for name in (case, ref):
            out += ["", f"### {name}: top ops by self time (profiled step: {totals[name]:.0f} ms of self time in all)",
                    "", "| op | calls | self (ms) | share |", "|---|---:|---:|---:|"]
            for o in prof["ops"][name][:top]:
                out.append(f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.1f} "
                           f"| {100 * o['self_ms'] / max(totals[name], 1e-9):.1f}% |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_report(result: dict[str, Any], out_dir: Path, stem: str, baseline: str, render=markdown) -> Path:
    """results/bench/<stem>.json and .md (by `render`), each written atomically; returns the JSON path."""
    json_path = out_dir / f"{stem}.json"
    write_text(json_path, json.dumps(result, indent=1) + "\n")
    write_text(out_dir / f"{stem}.md", render(result, baseline))
    for path in (json_path, out_dir / f"{stem}.md"):
        path.chmod(0o644)  # the atomic writer's temporary file is private; results are for everyone to read
    return json_path
