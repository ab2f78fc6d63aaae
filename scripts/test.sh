#!/usr/bin/env bash
# Set up (or reuse) .venv and run the whole test suite, slow multi-process tests included.
#   bash scripts/test.sh                 # everything (CI runs exactly this)
#   bash scripts/test.sh -m "not slow"   # the fast part
#   bash scripts/test.sh tests/test_layer.py -k merge
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
python -m pytest "$@"
