"""Adapter cost benchmark: ABBA against peft's LoRA, DoRA, HiRA and LoHa, side by side in one process.

    python -m abba.bench                      # CPU, writes results/bench/cpu-<date>.{json,md}
    python -m abba.bench device=cuda          # GPU, bf16
    python -m abba.bench quick=true out_dir=/tmp/bench   # seconds; a smoke run
    python -m abba.bench parts=[smollm2]      # real SmolLM2-135M training step, ABBA vs LoRA, float32 and bf16
                                              # autocast: writes results/bench/cpu-smollm2-<date>.{json,md}

Settings: configs/bench.yaml. Layout: cases.py builds the cases, measure.py times them and traces memory,
flops.py gives the arithmetic floor, report.py writes JSON and Markdown, run.py ties them together;
real_model.py is the smollm2 part (a real model on real records).
"""

from .run import run_benchmark

__all__ = ["run_benchmark"]
