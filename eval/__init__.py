"""Evaluation with the ABBA paper's protocol: GSM8K and MATH (arithmetic), and the eight commonsense benchmarks.

    python -m eval.run benchmark=<name|arithmetic|commonsense> model_path=DIR output_dir=OUT [backend=auto|vllm|hf]
    python -m eval.rescore benchmark=<name> input=samples.jsonl output=rescored.jsonl
    bash scripts/arithmetic_merge_eval.sh RUN_DIR...    (or cr_merge_eval.sh: merge + evaluate into results/)

Layout: benchmarks/ (one spec per task: data, prompt, decoding, stop strings, scorer), scoring/ (answer
extraction and equivalence, no model needed), backends/ (hf generate, vllm), samples.py (resumable JSONL).
run.py (the entry point) with checks.py (the command line), resume.py (what a re-run keeps), nll.py and
nll_pass.py (nll=true); rescore.py (score saved completions again).
Merging training runs and evaluating them into results/<experiment>/seed<k>/ is abba/merge_eval.py.
"""
