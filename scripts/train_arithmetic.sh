#!/usr/bin/env bash
# Fine-tune on MetaMathQA (paper v4 Table 2) on every visible GPU with DeepSpeed ZeRO-2; extra arguments are
# Hydra overrides. Default experiment: Mistral-7B + ABBA r=32.
#   bash scripts/train_arithmetic.sh                                        # t2_mistral_7b_abba_r32, seed 0
#   bash scripts/train_arithmetic.sh experiment=t2_gemma2_9b_abba_r32 seed=1
#   CUDA_VISIBLE_DEVICES=0,1 bash scripts/train_arithmetic.sh trainer=zero3
# With N GPUs the gradient accumulation is divided by N (trainer.keep_global_batch), keeping the paper's batch.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/_launch.sh t2_mistral_7b_abba_r32 "$@"
