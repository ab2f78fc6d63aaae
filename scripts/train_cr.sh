#!/usr/bin/env bash
# Fine-tune on Commonsense170K (paper v4 Table 1) on every visible GPU with DeepSpeed ZeRO-2; extra arguments are
# Hydra overrides. Default experiment: Llama-3.2 1B + ABBA r=32. Needs commonsense_170k.json under
# paths.data_dir (env ABBA_DATA_DIR) or data.path=...
#   bash scripts/train_cr.sh                                                # t1_llama3_2_1b_abba_r32, seed 0
#   bash scripts/train_cr.sh experiment=t1_llama3_2_3b_lora seed=2
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/_launch.sh t1_llama3_2_1b_abba_r32 "$@"
