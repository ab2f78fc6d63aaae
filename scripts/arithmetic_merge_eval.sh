#!/usr/bin/env bash
# Merge each finished arithmetic run and evaluate it on GSM8K and MATH into results/<experiment>/seed<k>/.
#   bash scripts/arithmetic_merge_eval.sh outputs/t2_mistral_7b_abba_r32/seed{0,1,2}
#   EVAL_ARGS="limit=100 backend=hf" KEEP_MERGED=1 bash scripts/arithmetic_merge_eval.sh outputs/smoke_arithmetic/seed0
# Runs in the active Python environment, or the repository's .venv when none is active.
# Env: EVAL_ARGS / MERGE_ARGS (extra key=value for eval.run / abba.merge), RESULTS_DIR (default results), KEEP_MERGED=1.
exec bash "$(dirname "$0")/_merge_eval.sh" arithmetic "$@"
