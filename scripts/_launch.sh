#!/usr/bin/env bash
# Shared launcher of train_arithmetic.sh / train_cr.sh:  _launch.sh DEFAULT_EXPERIMENT [overrides...]
# torchrun over all visible GPUs with trainer=zero2, unless the overrides name their own experiment=/trainer=.
# Without a GPU it runs one plain CPU process (trainer=single), unless NPROC_PER_NODE or NNODES asks for more.
# Several nodes: run the same command on every node, each with its NODE_RANK (static rendezvous, so node 0's
# processes are ranks 0..N-1 and rank 0, which writes the run folder, is on node 0):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/train_arithmetic.sh seed=1     # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash scripts/train_arithmetic.sh seed=1     # on node1
# Env: NNODES (default 1), NODE_RANK (0..NNODES-1), RDZV_ENDPOINT=host:port or MASTER_ADDR [MASTER_PORT, default
# 29500] (node 0's address), NPROC_PER_NODE (default: the visible GPUs). scripts/slurm_multinode.sbatch sets them
# from SLURM. The world size (NNODES x NPROC_PER_NODE) must divide trainer.gradient_accumulation_steps: checked,
# with the command line, once before torchrun starts (python -m abba.launch).
set -euo pipefail
[ -f .venv/bin/activate ] && source .venv/bin/activate
die() { echo "error: $1" >&2; exit 2; }
default_experiment="$1"; shift
experiment="experiment=$default_experiment"
trainer="trainer=zero2"
for arg in "$@"; do
  [[ "$arg" == experiment=* ]] && experiment=""
  [[ "$arg" == trainer=* ]] && trainer=""
done
ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then  # set but empty: no GPU
    ngpu=$(awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES")
  else
    ngpu=$(nvidia-smi -L | wc -l)
  fi
fi
nnodes="${NNODES:-1}"
[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "NNODES=$nnodes: must be a positive integer (the number of nodes)"
nproc="${NPROC_PER_NODE:-$ngpu}"
[[ "$nproc" =~ ^[0-9]+$ ]] || die "NPROC_PER_NODE=$nproc: must be a positive integer (processes per node)"
if [ "$nnodes" -eq 1 ] && [ "$nproc" -eq 0 ]; then
  exec python -m abba.train $experiment "$@"
fi
rendezvous=(--standalone)
if [ "$nnodes" -gt 1 ]; then
  endpoint="${RDZV_ENDPOINT:-${MASTER_ADDR:+$MASTER_ADDR:${MASTER_PORT:-29500}}}"
  if [ -z "${NODE_RANK:-}" ] || [ -z "$endpoint" ]; then
    die "NNODES=$nnodes needs NODE_RANK and RDZV_ENDPOINT (or MASTER_ADDR): set NODE_RANK=0..$((nnodes - 1)) (this node) and RDZV_ENDPOINT=<node 0's host>:<port> on every node"
  fi
  [[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$nnodes" ] \
    || die "NODE_RANK=$NODE_RANK: must be 0..$((nnodes - 1)) with NNODES=$nnodes"
  [[ "$endpoint" =~ ^[^:]+:[0-9]+$ ]] || die "rendezvous endpoint '$endpoint': must be host:port"
  rendezvous=(--nnodes "$nnodes" --node_rank "$NODE_RANK" --master_addr "${endpoint%:*}" --master_port "${endpoint##*:}")
fi
[ "$nproc" -ge 1 ] || die "NNODES=$nnodes with no GPU: set NPROC_PER_NODE (processes per node)"
python -m abba.launch world_size=$((nnodes * nproc)) $experiment $trainer "$@"
exec torchrun "${rendezvous[@]}" --nproc_per_node "$nproc" -m abba.train $experiment $trainer "$@"
