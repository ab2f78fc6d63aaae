#!/usr/bin/env bash
# Merge each finished commonsense run and evaluate it on the eight commonsense benchmarks into
# results/<experiment>/seed<k>/.
#   bash scripts/cr_merge_eval.sh outputs/t1_llama3_2_1b_abba_r32/seed{0,1,2}
#   EVAL_ARGS="backend=vllm tensor_parallel_size=2" bash scripts/cr_merge_eval.sh outputs/t1_llama3_2_3b_abba_r32/seed0
# Runs in the active Python environment, or the repository's .venv when none is active.
# Env: EVAL_ARGS / MERGE_ARGS (extra key=value for eval.run / abba.merge), RESULTS_DIR (default results), KEEP_MERGED=1.
exec bash "$(dirname "$0")/_merge_eval.sh" commonsense "$@"
