#!/usr/bin/env bash
# Download every benchmark and training file the project uses (GSM8K, MATH, the eight commonsense test sets, the
# commonsense training splits, MetaMathQA, Commonsense170K) from their public homes into the data folder that
# training and evaluation read: $ABBA_DATA_DIR, else ../shared/data beside the repository. Resumable; checks every
# pinned file's size and sha256; one `error:` line per file that failed (exit 1). In .venv (scripts/setup_venv.sh).
#   bash scripts/get_data.sh                        # everything (MetaMathQA alone is ~400 MB)
#   bash scripts/get_data.sh only=tests             # the 15 files the test suite reads
#   bash scripts/get_data.sh data_dir=/data/abba only=arithmetic,commonsense
#   bash scripts/get_data.sh source=http://host:8000   # a mirror laid out as the data folder (MATH: MATH.tar)
# The manifest (URLs, target paths, sizes, digests) is abba/data/download.py.
set -euo pipefail
# A relative data_dir= is the caller's, not the repository's (the script runs from the repository root).
args=()
for arg in "$@"; do
  if [[ "$arg" == data_dir=* && "${arg#data_dir=}" != /* && -n "${arg#data_dir=}" ]]; then
    arg="data_dir=$PWD/${arg#data_dir=}"
  fi
  args+=("$arg")
done
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
exec python -m abba.data.download ${args[@]+"${args[@]}"}
