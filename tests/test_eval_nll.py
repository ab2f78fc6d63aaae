"""eval.run nll=true (teacher-forced NLL of the gold responses) and subset=random, on a tiny random Llama and the
excerpts of the real benchmark files (tests/data). Expected values come from transformers' own loss and from the
data files, not from eval/."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from eval.benchmarks import BENCHMARKS, load_items
from eval.resume import SimulatedInterrupt
from eval.run import evaluate, load_config
from conftest import EXCERPTS
from eval_helpers import one_thread  # noqa: F401  (fixture)

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\n{instruction}\n\n### Response:\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny random Llama whose weights are large enough that each token's probability depends on its
    context (at the default init every token costs about log(vocab), which would hide a misaligned label)."""
    from abba.base_model import load_tokenizer
    from conftest import model_cfg, tiny_model

    path = tmp_path_factory.mktemp("nll_model") / "model"
    model = tiny_model(seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(path)
    load_tokenizer(model_cfg("tiny_llama")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _config(model, out, *extra):
    return load_config([f"model_path={model}", f"output_dir={out}", "backend=hf", "batch_size=4", "device=cpu",
                        f"paths.data_dir={EXCERPTS}", *extra])


def _lines(path):
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def _records(excerpt_data, name):
    return json.loads((excerpt_data / "commonsense" / name / "test.json").read_text())


def _transformers_nll(model, tokenizer, prompt: str, response: str) -> tuple[float, int]:
    """(mean cross-entropy transformers computes over the response + EOS, number of those tokens), one item."""
    ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    labels = [-100] * n_prompt + ids[n_prompt:]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return loss.item(), sum(label != -100 for label in labels[1:])  # position 0 predicts nothing


def test_nll_equals_transformers_loss_on_real_arc_easy_items(model_dir, loaded, excerpt_data, tmp_path, one_thread):
    out = tmp_path / "out"
    evaluate(_config(model_dir, out, "benchmark=ARC-Easy", "limit=5", "subset=random", "subset_seed=7", "nll=true"))
    metrics = json.loads((out / "metrics.json").read_text())["ARC-Easy"]
    lines = _lines(out / "nll_ARC-Easy.jsonl")
    samples = {r["id"]: r for r in _lines(out / "samples_ARC-Easy.jsonl")}
    records = _records(excerpt_data, "ARC-Easy")
    assert len(lines) == 5 and sorted(r["id"] for r in lines) == sorted(samples)

    model, tokenizer = loaded
    total, tokens = 0.0, 0
    for line in lines:
        record = records[int(line["id"])]
        prompt = ALPACA.format(instruction=record["instruction"])
        assert samples[line["id"]]["prompt"] == prompt  # the NLL's prompt is the evaluation prompt
        assert record["output"].startswith("the correct answer is ")
        mean, n = _transformers_nll(model, tokenizer, prompt, record["output"])
        assert line["n_tokens"] == n
        assert line["nll_sum"] / n == pytest.approx(mean, abs=1e-5)
        total, tokens = total + mean * n, tokens + n
    assert metrics["nll"] == pytest.approx(total / tokens, abs=1e-5)
    assert metrics["nll_items"] == 5 and metrics["nll_tokens"] == tokens
    assert metrics["limit"] == 5 and metrics["subset"] == "random" and metrics["subset_seed"] == 7 and metrics["n"] == 5


def test_batched_nll_equals_one_by_one(loaded, excerpt_data, one_thread):
    from eval import nll

    model, tokenizer = loaded
    items = [it for name in ("ARC-Easy", "boolq", "gsm8k")
             for it in load_items(BENCHMARKS[name], excerpt_data, limit=4, subset="random", seed=1, references=True)]
    references = [it.reference for it in items]

    def run(batch_size):
        results = {}
        for batch in nll.score(model, tokenizer, references, batch_size=batch_size):
            assert len(batch) <= batch_size
            results.update(batch)
        return [results[i] for i in range(len(references))]

    batched, single = run(5), run(1)
    lengths = [len(tokenizer(r["output"])["input_ids"]) for r in references]
    assert len(set(lengths)) > 3  # batches really are padded
    for b, s in zip(batched, single):
        assert b["n_tokens"] == s["n_tokens"] > 0
        assert b["nll_sum"] / b["n_tokens"] == pytest.approx(s["nll_sum"] / s["n_tokens"], abs=1e-5)
    # GSM8K's reference is its worked solution in the training format, under the training prompt.
    gsm8k = [it for it in items if it.prompt.endswith("Let's think step by step.")]
    assert len(gsm8k) == 4 and all(it.reference["output"].endswith(f"The answer is: {it.gold}") for it in gsm8k)
    assert all("<<" not in it.reference["output"] and "####" not in it.reference["output"] for it in gsm8k)


def test_killed_nll_pass_resumes_and_scores_every_item_once(model_dir, excerpt_data, tmp_path, monkeypatch,
                                                            one_thread):
    from eval import nll

    scored: list[str] = []
    original = nll.score

    def counting(model, tokenizer, references, *args, **kwargs):
        scored.extend(r["instruction"] for r in references)
        yield from original(model, tokenizer, references, *args, **kwargs)

    monkeypatch.setattr(nll, "score", counting)
    out = tmp_path / "out"
    args = ("benchmark=boolq", "limit=10", "nll=true")
    with pytest.raises(SimulatedInterrupt):
        evaluate(_config(model_dir, out, *args, "+debug.interrupt_after=4"))
    path = out / "nll_boolq.jsonl"
    first = _lines(path)
    assert len(first) == 4 and not (out / "metrics.json").exists()
    with path.open("a") as f:  # a kill in the middle of a write leaves a torn line
        f.write('{"id": "9", "nll_s')
    scored.clear()

    metrics = evaluate(_config(model_dir, out, *args))["boolq"]
    lines = _lines(path)
    assert sorted(r["id"] for r in lines) == sorted(str(i) for i in range(10))  # each item exactly once
    items = load_items(BENCHMARKS["boolq"], excerpt_data, limit=10, references=True)
    done_first = {r["id"] for r in first}
    assert sorted(scored) == sorted(it.reference["instruction"] for it in items if it.id not in done_first)
    assert metrics["nll"] == pytest.approx(sum(r["nll_sum"] for r in lines) / sum(r["n_tokens"] for r in lines))
    assert metrics["nll_items"] == 10

    scored.clear()
    evaluate(_config(model_dir, out, *args))  # finished: nothing to score again
    assert scored == [] and len(_lines(path)) == 10


def test_random_subset_is_seeded_and_drawn_from_the_file(excerpt_data):
    bench = BENCHMARKS["ARC-Easy"]
    records = _records(excerpt_data, "ARC-Easy")

    def ids(seed, limit=20):
        return [it.id for it in load_items(bench, excerpt_data, limit=limit, subset="random", seed=seed)]

    first, again, other = ids(0), ids(0), ids(1)
    assert first == again and first != other
    for chosen in (first, other):
        positions = [int(i) for i in chosen]
        assert len(set(positions)) == 20 and positions == sorted(positions)  # N distinct, in file order
        assert all(0 <= p < len(records) for p in positions)
    assert positions != list(range(20))
    items = load_items(bench, excerpt_data, limit=20, subset="random", seed=1)
    for it in items:  # each id names the file record the item was made from
        record = records[int(it.id)]
        assert it.gold == record["answer"] and it.prompt == ALPACA.format(instruction=record["instruction"])
    assert [it.id for it in load_items(bench, excerpt_data, limit=5)] == ["0", "1", "2", "3", "4"]  # subset=first
    n_obqa = len(_records(excerpt_data, "openbookqa"))
    everything = load_items(BENCHMARKS["openbookqa"], excerpt_data, limit=n_obqa + 100, subset="random")
    assert [it.id for it in everything] == [str(i) for i in range(n_obqa)]  # fewer than N: all of them


def test_nll_on_a_benchmark_without_reference_is_a_one_line_error(tmp_path):
    from conftest import REPO_ROOT

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "eval.run", "benchmark=math", f"model_path={tmp_path / 'none'}",
                           f"output_dir={out}", "nll=true"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nll=true" in lines[0] and "math" in lines[0], proc.stderr
    assert not out.exists()  # stopped before anything was read, loaded or written
