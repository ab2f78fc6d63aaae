#!/usr/bin/env bash
# The whole pipeline, small, on a CPU: no GPU, no Hugging Face Hub, nothing downloaded but the Python packages.
#   bash scripts/quickstart.sh           # ~1.5 min on 2 cores, plus ~2 min the first time to install .venv
# Steps: .venv + CPU extras (scripts/setup_venv.sh); the quick reconstruction experiment (paper Fig. 2, small);
# synthetic arithmetic word problems in GSM8K's format (2000 train / 100 held-out, abba/synthetic.py); ABBA and
# LoRA fine-tuning of a tiny random Llama on them (configs/experiment/quickstart_{abba,lora}.yaml); merge;
# HF-backend evaluation on the held-out split with the GSM8K scorer; a results table and a loss-curve plot.
# Everything goes under outputs/quickstart/ (git-ignored) and every step starts from scratch.
# QUICKSTART_OUT=dir moves the output folder (the data path in the experiment files follows it).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
source scripts/setup_venv.sh

out="${QUICKSTART_OUT:-outputs/quickstart}"
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }
mkdir -p "$out"

step "1/6 reconstruction: ABBA vs LoRA on four kinds of target matrix (quick version)"
python -m abba.reconstruct quick=true output_dir="$out/reconstruction"

step "2/6 synthetic arithmetic word problems (GSM8K format)"
python -m abba.synthetic out_dir="$out/data" n_train=2000 n_test=100 seed=0

for method in abba lora; do
  run="$out/runs/quickstart_$method/seed0"
  step "3/6 fine-tune the tiny random Llama with $method -> $run"
  python -m abba.train experiment="quickstart_$method" output_dir="$run" data.path="$out/data/train.jsonl" \
    overwrite=true

  step "4/6 merge the $method adapter into the base model"
  python -m abba.merge adapter_dir="$run/final" output_dir="$out/merged/$method" overwrite=true

  step "5/6 evaluate on the held-out split with the GSM8K scorer (HF backend)"
  result="$out/results/quickstart_$method/seed0"
  rm -rf "$result"
  python -m eval.run benchmark=gsm8k model_path="$out/merged/$method" output_dir="$result" backend=hf \
    data_file="$out/data/test.jsonl" batch_size=100
  cp "$run/config.yaml" "$run/run_info.json" "$result/"   # the table builder reads them beside metrics.json
done

step "6/6 results table and loss curve"
python -m abba.tables results_dir="$out/results" output_dir="$out/tables" tables=other
python -m abba.plots loss_curve out="$out/loss_curve.png" ABBA="$out/runs/quickstart_abba/seed0" \
  LoRA="$out/runs/quickstart_lora/seed0"

echo
cat "$out/tables/other.md"
echo
echo "== done in $((SECONDS - start)) s. Outputs:"
echo "  reconstruction figure : $out/reconstruction/reconstruction.png (.csv)"
echo "  synthetic data        : $out/data/{train,test}.jsonl"
echo "  training runs         : $out/runs/quickstart_{abba,lora}/seed0 (metrics.jsonl, final/)"
echo "  merged models         : $out/merged/{abba,lora}"
echo "  evaluation            : $out/results/quickstart_{abba,lora}/seed0 (metrics.json, samples_gsm8k.jsonl)"
echo "  results table         : $out/tables/other.md (.csv .tex .png)"
echo "  loss curve            : $out/loss_curve.png"
