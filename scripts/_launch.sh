#!/usr/bin/env bash
# Shared launcher of train_arithmetic.sh / train_cr.sh:  _launch.sh DEFAULT_EXPERIMENT [overrides...]
# torchrun over all visible GPUs with trainer=zero2, unless the overrides name their own experiment=/trainer=.
# Without a GPU it runs one plain CPU process (trainer=single).
set -euo pipefail
[ -f .venv/bin/activate ] && source .venv/bin/activate
default_experiment="$1"; shift
experiment="experiment=$default_experiment"
trainer="trainer=zero2"
for arg in "$@"; do
  [[ "$arg" == experiment=* ]] && experiment=""
  [[ "$arg" == trainer=* ]] && trainer=""
done
ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    ngpu=$(awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES")
  else
    ngpu=$(nvidia-smi -L | wc -l)
  fi
fi
if [ "$ngpu" -eq 0 ]; then
  exec python -m abba.train $experiment "$@"
fi
exec torchrun --standalone --nproc_per_node "$ngpu" -m abba.train $experiment $trainer "$@"
