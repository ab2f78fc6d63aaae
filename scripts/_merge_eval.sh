#!/usr/bin/env bash
# Shared body of cr_merge_eval.sh / arithmetic_merge_eval.sh:  _merge_eval.sh GROUP RUN_DIR...
# Runs `python -m abba.merge_eval GROUP RUN_DIR...` in the active Python environment, or the repository's .venv
# when none is active. RUN_DIR arguments stay relative to the caller's directory.
# Env: EVAL_ARGS / MERGE_ARGS (extra key=value for eval.run / abba.merge), RESULTS_DIR (default <repo>/results),
# KEEP_MERGED=1 (keep RESULTS/merged/).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
[ -z "${VIRTUAL_ENV:-}" ] && [ -f "$REPO/.venv/bin/activate" ] && source "$REPO/.venv/bin/activate"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
exec python -m abba.merge_eval "$@"
