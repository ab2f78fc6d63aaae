"""`parts=[smollm2]`: training steps of a real pretrained model on real training records, ABBA against LoRA.

    python -m abba.bench parts=[smollm2]        # writes results/bench/<device>-smollm2-<date>.{json,md}

The model is the `smollm2` block's `configs/model/<model>.yaml` entry (SmolLM2-135M-Instruct from its GGUF file by
default), loaded once; every case shares its frozen weights and gets its own adapter and AdamW, attached through
`abba.methods.apply_method` exactly as training attaches it. The batch is `records` commonsense training records
drawn at random (seeded) from `data_files`, formatted and tokenized as training does (`abba.data.tokenize`,
truncated at `max_length`, prompt tokens masked out of the loss) and padded to the longest by the collator training
uses (`DataCollatorForSeq2Seq`). One step = zero_grad, forward with labels, backward, AdamW step, in every
precision of `precisions`: `float32`, or `bf16_autocast` (float32 weights under torch.autocast(bfloat16), which is
what `trainer.bf16=true` does). All (case, precision) steps run interleaved round-robin in one loop, so that the
load of other jobs on the machine hits ABBA and LoRA alike; the ratios are taken within each precision.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from ..cli import Refusal
from ..methods import apply_method
from ..data.tokenize import IGNORE_INDEX, tokenize_example
from ..layout import REPO_ROOT, resolve_path
from ..base_model import build_model, load_tokenizer
from ..model import parameter_counts
from .cases import Case, method_config, trainable_params
from .flops import layer_flops
from .measure import module_state_tensors

PRECISIONS = {"float32": None, "bf16_autocast": torch.bfloat16}


def model_entry(block: Mapping[str, Any]) -> dict[str, Any]:
    """configs/model/<model>.yaml with the block's overrides on top."""
    entry = OmegaConf.load(REPO_ROOT / "configs" / "model" / f"{block['model']}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(entry, block.get("overrides") or {}), resolve=True)


def data_paths(data_dir: str, files: list[str]) -> list[Path]:
    """Each of `files` under `data_dir`; raises Refusal naming the first that is missing (run_benchmark asks
    before anything is measured or loaded)."""
    paths = [Path(resolve_path(Path(data_dir) / name)) for name in files]
    for path in paths:
        if not path.is_file():
            raise Refusal(f"smollm2.data_files: {path} not found: set ABBA_DATA_DIR or smollm2.data_dir "
                          f"(bash scripts/get_data.sh downloads the files)")
    return paths


def load_records(data_dir: str, files: list[str]) -> list[dict[str, Any]]:
    """The records of every file (JSON lists of {instruction, input, output, ...}), each tagged with its file."""
    records = []
    for name, path in zip(files, data_paths(data_dir, files)):
        records += [dict(r, _file=name) for r in json.loads(path.read_text())]
    return records


def real_batch(block: Mapping[str, Any], tokenizer, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One padded batch of `records` examples drawn at random, and what it holds (shape, tokens, sources).

    Examples left with no response token after truncation are skipped, as training drops them."""
    from transformers import DataCollatorForSeq2Seq

    records = load_records(block["data_dir"], list(block["data_files"]))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    features, picked = [], []
    for i in order:
        ex = tokenize_example(records[i], tokenizer, int(block["max_length"]))
        if all(label == IGNORE_INDEX for label in ex["labels"]):
            continue
        features.append({k: ex[k] for k in ("input_ids", "attention_mask", "labels")})
        picked.append(i)
        if len(features) == int(block["records"]):
            break
    if len(features) < int(block["records"]):
        raise ValueError(f"smollm2.records={block['records']}: only {len(features)} usable records in the data files")
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)(features)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    lengths = [len(f["input_ids"]) for f in features]
    info = {"batch": len(features), "seq": int(batch["input_ids"].shape[1]), "padding_side": tokenizer.padding_side,
            "non_pad_tokens": int(batch["attention_mask"].sum()), "padded_tokens": int(batch["input_ids"].numel()),
            "loss_tokens": int((batch["labels"] != IGNORE_INDEX).sum()), "lengths": lengths,
            "sources": {f: sum(records[i]["_file"] == f for i in picked) for f in block["data_files"]},
            "record_indices": picked}
    return batch, info


def step_matmul_flops(model: nn.Module, config, batch: int, seq: int) -> float:
    """Matmul FLOPs of one training step by the formulas of flops.py: every adapted projection (input gradient
    included), every other frozen linear layer (lm_head: forward + input gradient) and attention's two batched
    products over the padded length (forward 4 B L^2 head_dim heads, backward twice that). Elementwise work, the
    loss and the optimizer are left out."""
    tokens = batch * seq
    total, adapted = 0.0, set()
    for module in model.modules():
        if type(module).__name__ == "ABBALinear":
            total += layer_flops("abba", tokens, module.in_features, module.out_features, module.r1, module.r2,
                                 module.forward_mode)
            adapted.add(id(module.base_layer))
        elif hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
            base = module.get_base_layer()
            total += layer_flops("lora", tokens, base.in_features, base.out_features, module.r[next(iter(module.r))])
            adapted.add(id(base))
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in adapted and not module.weight.requires_grad:
            total += layer_flops("frozen", tokens, module.in_features, module.out_features)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    total += 12.0 * batch * seq**2 * head_dim * config.num_attention_heads * config.num_hidden_layers
    return total


def real_model_cases(block: Mapping[str, Any], base: nn.Module, batch: dict[str, torch.Tensor], device: str,
                     seed: int) -> tuple[list[Case], dict[str, float]]:
    """One Case per (adapter, precision), named <case>/<precision>; each adapter's precisions share its model and
    optimizer. Also returns each adapter's step matmul FLOPs."""
    batch = {k: v.to(device) for k, v in batch.items()}
    seq = batch["input_ids"].shape[1]
    cases, flops = [], {}
    models = {}
    for spec in block["cases"]:
        # deepcopy with the parameters in the memo: new modules, the same frozen tensors (no copy of the weights).
        shared = {id(p): p for p in base.parameters()}
        model = apply_method(copy.deepcopy(base, memo=shared), method_config(spec, block["target_modules"]), seed)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=block["lr"],
                                      weight_decay=0.0)
        models[spec["name"]] = (model, optimizer)
        flops[spec["name"]] = step_matmul_flops(model, base.config, batch["input_ids"].shape[0], seq)
    for precision in block["precisions"]:
        if precision not in PRECISIONS:
            raise ValueError(f"smollm2.precisions: unknown {precision!r}; use {', '.join(PRECISIONS)}")
        autocast_dtype = PRECISIONS[precision]
        for spec in block["cases"]:
            model, optimizer = models[spec["name"]]

            def step(model=model, optimizer=optimizer, autocast_dtype=autocast_dtype):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    loss = model(**batch).loss
                loss.backward()
                optimizer.step()

            def resident(model=model, optimizer=optimizer):  # gradients are released at each step's start
                optimizer.zero_grad(set_to_none=True)
                return module_state_tensors(model, optimizer) + list(batch.values())

            info = {"method": spec["name"], "precision": precision, "trainable_params": trainable_params(model)}
            modes = sorted({m.forward_mode for m in model.modules() if type(m).__name__ == "ABBALinear"})
            if modes:
                info["forward_modes"] = modes
            cases.append(Case(f"{spec['name']}/{precision}", step, resident, info))
    return cases, flops


def paired_ratios(timing: Mapping[str, Mapping[str, Any]], case: str, baseline: str, key: str = "samples_s") -> list[float]:
    """case / baseline for each round: the two ran back to back, so the load they saw was alike."""
    return [a / b for a, b in zip(timing[case][key], timing[baseline][key])]


def ratio_rows(rows: list[dict[str, Any]], timing: Mapping[str, Mapping[str, Any]], block: Mapping[str, Any],
               flops: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per precision and non-baseline adapter: every ratio against the baseline adapter."""
    baseline = block["baseline_case"]
    by = {(r["method"], r["precision"]): r for r in rows}
    out = []
    for precision in block["precisions"]:
        ref = by.get((baseline, precision))
        if ref is None:
            continue
        for spec in block["cases"]:
            r = by[(spec["name"], precision)]
            if spec["name"] == baseline:
                continue
            paired = paired_ratios(timing, r["case"], ref["case"])
            paired_cpu = paired_ratios(timing, r["case"], ref["case"], "cpu_samples_s")
            out.append({
                "case": spec["name"], "baseline": baseline, "precision": precision,
                "time_ratio_of_medians": r["median_s"] / ref["median_s"],
                "time_ratio_paired_median": statistics.median(paired), "time_ratio_paired": paired,
                "time_ratio_of_mins": r["min_s"] / ref["min_s"],
                "cpu_time_ratio_of_medians": r["cpu_median_s"] / ref["cpu_median_s"],
                "cpu_time_ratio_paired_median": statistics.median(paired_cpu),
                "tokens_per_s_ratio": r["tokens_per_s"] / ref["tokens_per_s"],
                "peak_memory_ratio": r["peak_bytes"] / ref["peak_bytes"],
                "step_rise_ratio": r["step_rise_bytes"] / ref["step_rise_bytes"],
                "matmul_flops_ratio": flops[spec["name"]] / flops[baseline],
                "target_time_ratio": block["target_time_ratio"],
                "meets_target": statistics.median(paired) <= block["target_time_ratio"],
            })
    return out


def op_differences(ops: Mapping[str, list[dict[str, Any]]], case: str, baseline: str, top: int) -> list[dict[str, Any]]:
    """The ops whose self time differs most between two profiled steps (case minus baseline)."""
    a = {o["op"]: o for o in ops[case]}
    b = {o["op"]: o for o in ops[baseline]}
    rows = []
    for name in set(a) | set(b):
        oa, ob = a.get(name, {}), b.get(name, {})
        rows.append({"op": name, "case_calls": oa.get("calls", 0), "case_self_ms": oa.get("self_ms", 0.0),
                     "baseline_calls": ob.get("calls", 0), "baseline_self_ms": ob.get("self_ms", 0.0),
                     "diff_ms": oa.get("self_ms", 0.0) - ob.get("self_ms", 0.0)})
    rows.sort(key=lambda r: -abs(r["diff_ms"]))
    return rows[:top]


def bench_real_model(s: dict[str, Any]) -> dict[str, Any]:
    """The `smollm2` section of the report: context, one row per (adapter, precision), ratios, profiles."""
    import gc
    import resource
    import time

    from .measure import profile_step, time_round_robin

    block = s["smollm2"]
    device = s["device"]
    entry = model_entry(block)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(entry)
    base = build_model(entry, dtype=entry.get("dtype", "float32"), seed=s["seed"], device=device)
    load_s = time.perf_counter() - t0
    batch, batch_info = real_batch(block, tokenizer, s["seed"])
    t0 = time.perf_counter()
    cases, flops = real_model_cases(block, base, batch, device, s["seed"])
    attach_s = time.perf_counter() - t0
    timing = time_round_robin({c.name: c.step for c in cases}, s["repeats"], s["warmup"], device,
                              desc="smollm2 step", alternate=True)
    rows, ops = [], {}
    for case in cases:
        memory, ops[case.name] = profile_step(case.step, case.resident(), device, top=0)
        t = timing[case.name]
        rows.append({"case": case.name, **case.info, **t, **memory,
                     "tokens_per_s": batch_info["non_pad_tokens"] / t["median_s"],
                     "padded_tokens_per_s": batch_info["padded_tokens"] / t["median_s"],
                     "matmul_flops": flops[case.info["method"]],
                     "matmul_flops_per_s": flops[case.info["method"]] / t["median_s"]})
    ratios = ratio_rows(rows, timing, block, flops)
    top = int(block["profile_top"])
    profile = {"method": "torch.profiler over one extra step per case (the memory step; profile_memory=True, so "
                         "profiler overhead is in these times), ops by self CPU time",
               "step_self_ms": {name: sum(o["self_ms"] for o in op_list) for name, op_list in ops.items()},
               "ops": ops, "ops_complete": True,  # every op of the step, not only the top ones
               "differences": {}}
    for r in ratios:
        case, ref = f"{r['case']}/{r['precision']}", f"{r['baseline']}/{r['precision']}"
        profile["differences"][case] = op_differences(ops, case, ref, top)
    arch = base.config
    context = {"model": block["model"], "name_or_path": entry.get("name_or_path"), "source": entry.get("source"),
               "gguf": entry.get("gguf"), "random_init": bool(entry.get("random_init", False)),
               "num_hidden_layers": arch.num_hidden_layers, "hidden_size": arch.hidden_size,
               "intermediate_size": arch.intermediate_size, "vocab_size": arch.vocab_size,
               "total_params": parameter_counts(base)[1], "weights_dtype": str(base.dtype),
               "target_modules": list(block["target_modules"]), "cases": block["cases"],
               "baseline_case": block["baseline_case"], "target_time_ratio": block["target_time_ratio"],
               "profile_top": top,
               "precisions": block["precisions"], "lr": block["lr"], "data_dir": block["data_dir"],
               "data_files": list(block["data_files"]), "max_length": block["max_length"], **batch_info,
               "load_s": load_s, "attach_s": attach_s,
               "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    del cases
    gc.collect()
    return {"context": context, "rows": rows, "ratios": ratios, "profile": profile}
