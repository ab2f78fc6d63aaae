#!/usr/bin/env bash
# Reproduce a table of the paper end to end: train every row (Hydra multirun over the table's experiment files
# x seeds 0,1,2), merge and evaluate every finished run, rebuild results/tables/.
#   bash scripts/reproduce.sh table1 dry_run=true              # list the jobs and the estimated GPU hours
#   bash scripts/reproduce.sh table1                           # Llama-3.2 1B/3B, commonsense (paper v4 Table 1)
#   bash scripts/reproduce.sh table2 hydra/launcher=slurm hydra.launcher.partition=gpu   # training on SLURM
#   SEEDS=0 EVAL_ARGS="backend=vllm" bash scripts/reproduce.sh table2 trainer.per_device_train_batch_size=2
#   bash scripts/reproduce.sh mini [dry_run=true]              # Table 1's protocol at CPU size on SmolLM2-135M
#                                                              # (abba/mini.py: sweep, seeds, evaluation, table)
# dry_run=true stops after the plan; every other key=value argument is a Hydra override for abba.train. Training
# runs with resume=true, so a re-run skips finished runs (RUN/final exists) and continues interrupted ones from
# their last checkpoint; runs whose results metrics.json already holds every benchmark of the table are not
# evaluated again. With hydra/launcher=slurm each training job is a SLURM job and this script waits for all of
# them (submitit's launcher blocks until its jobs finish), then merges and evaluates locally. LoRA-Pro's rows
# (abba/lorapro.py) run in one process or plain data parallel: a trainer=zero2/zero3 override makes abba.train
# refuse them.
# Env: SEEDS (default 0,1,2), RESULTS_DIR (default results), EVAL_ARGS / MERGE_ARGS (see scripts/*_merge_eval.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && source .venv/bin/activate

usage="usage: bash scripts/reproduce.sh table1|table2|mini [dry_run=true] [hydra overrides...]"
table="${1:-}"
if [[ "$table" == mini ]]; then
  shift
  exec python -m abba.mini "$@"   # key=value: dry_run=true, methods=..., size=...
fi
if [[ "$table" != table1 && "$table" != table2 ]]; then
  echo "error: first argument must be table1, table2 or mini, got '${table}'; $usage" >&2
  exit 2
fi
shift
dry_run=0
overrides=()
for arg in "$@"; do
  case "$arg" in
    dry_run=true) dry_run=1 ;;
    dry_run=false) ;;
    dry_run=*) echo "error: $arg: use dry_run=true or dry_run=false; $usage" >&2; exit 2 ;;
    *) overrides+=("$arg") ;;
  esac
done
seeds="${SEEDS:-0,1,2}"
export RESULTS_DIR="${RESULTS_DIR:-results}"
plan=(python -m abba.reproduce "$table" seeds="$seeds" results_dir="$RESULTS_DIR")

"${plan[@]}" print=plan "${overrides[@]}"
if [ "$dry_run" -eq 1 ]; then
  exit 0
fi

echo "== training (${seeds//,/ } seeds; finished runs are skipped)"
experiments="$("${plan[@]}" print=experiments)"
python -m abba.train -m experiment="$experiments" seed="$seeds" resume=true "${overrides[@]}"

echo "== merge + evaluate the runs that are not evaluated yet"
mapfile -t todo < <("${plan[@]}" print=eval-todo "${overrides[@]}")
if [ "${#todo[@]}" -gt 0 ]; then
  bash "$("${plan[@]}" print=merge-eval-script)" "${todo[@]}"
fi

echo "== tables"
python -m abba.tables results_dir="$RESULTS_DIR" output_dir="$RESULTS_DIR/tables"
"${plan[@]}" print=plan "${overrides[@]}" | tail -n 1
