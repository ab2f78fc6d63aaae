"""End to end on CPU: train a smoke ABBA adapter (abba.train, a few steps), merge it, evaluate 20 GSM8K and
20 BoolQ items with the HF backend, check the files, and check batched == one-by-one greedy completions."""

from __future__ import annotations

import json

import pytest

from abba.merge import merge
from eval.backends import truncate_at_stop
from eval.benchmarks.base import ARITHMETIC_STOP
from eval.run import evaluate, load_config
from eval_helpers import one_thread  # noqa: F401  (fixture)
from train_helpers import compose_train

FIELDS = {"id", "prompt", "completion", "prediction", "gold", "correct"}
# The released evaluators' stop strings, for GSM8K, MATH and the commonsense sets alike.
STOP_STRINGS = ["Instruction:", "Instruction", "Response:", "Response"]


def _records(path):
    return {r["id"]: r for r in map(json.loads, path.read_text().split("\n")[:-1])}


@pytest.mark.slow
def test_train_merge_evaluate_gsm8k_and_boolq(excerpt_data, tmp_path, tokenizer, one_thread):
    from abba.train import train

    run = tmp_path / "run"
    train(compose_train("experiment=smoke_arithmetic", f"output_dir={run}", f"paths.data_dir={excerpt_data}",
                        "data.subset_size=16", "data.max_length=256", "trainer.max_steps=4",
                        "trainer.per_device_train_batch_size=4", "trainer.save_steps=100"))
    merge(run / "final", tmp_path / "merged")

    out, single = tmp_path / "eval", tmp_path / "eval_single"
    common = [f"model_path={tmp_path / 'merged'}", "backend=hf", "limit=20", f"paths.data_dir={excerpt_data}"]
    evaluate(load_config([*common, "benchmark=gsm8k", f"output_dir={out}", "batch_size=8"]))
    evaluate(load_config([*common, "benchmark=boolq", f"output_dir={out}", "batch_size=8"]))
    evaluate(load_config([*common, "benchmark=gsm8k", f"output_dir={single}", "batch_size=1"]))

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"gsm8k", "boolq"}
    for name, entry in metrics.items():
        assert entry["n"] == 20 and 0.0 <= entry["accuracy"] <= 1.0 and entry["backend"] == "hf"
        assert entry["model_path"] == str(tmp_path / "merged") and "git_commit" in entry
    assert metrics["gsm8k"]["decoding"]["do_sample"] is False
    assert metrics["gsm8k"]["decoding"]["max_new_tokens"] == 256
    assert metrics["gsm8k"]["decoding"]["stop"] == STOP_STRINGS
    assert metrics["boolq"]["decoding"] | {"seed": 0} == {"max_new_tokens": 32, "do_sample": True, "temperature": 0.1,
                                                         "top_p": 0.75, "top_k": 40, "stop": STOP_STRINGS,
                                                         "seed": 0}

    raw = [json.loads(line) for line in (excerpt_data / "math_eval" / "gsm8k_test.jsonl").open()][:20]
    gsm8k, boolq = _records(out / "samples_gsm8k.jsonl"), _records(out / "samples_boolq.jsonl")
    assert sorted(gsm8k) == sorted(boolq) == sorted(str(i) for i in range(20))
    for i, record in ((int(k), v) for k, v in gsm8k.items()):
        assert set(record) >= FIELDS
        assert record["prompt"] == ("Below is an instruction that describes a task. Write a response that "
                                    "appropriately completes the request.\n\n### Instruction:\n"
                                    f"{raw[i]['question']}\n\n### Response: Let's think step by step.")
        assert record["gold"] == raw[i]["answer"].split("#### ")[-1].strip()
        assert truncate_at_stop(record["completion"], ARITHMETIC_STOP) == record["completion"]
        assert record["correct"] == (record["prediction"] == record["gold"])
    assert metrics["gsm8k"]["accuracy"] == sum(r["correct"] for r in gsm8k.values()) / 20
    assert all(r["prompt"].endswith("### Response:\n") and r["gold"] in ("true", "false") for r in boolq.values())
    assert all(truncate_at_stop(r["completion"], ARITHMETIC_STOP) == r["completion"] for r in boolq.values())

    # Left padding must not change greedy decoding: the batches mixed prompts of different lengths.
    lengths = {len(tokenizer(r["prompt"])["input_ids"]) for r in gsm8k.values()}
    assert len(lengths) > 5
    one_by_one = _records(single / "samples_gsm8k.jsonl")
    assert {k: r["completion"] for k, r in gsm8k.items()} == {k: r["completion"] for k, r in one_by_one.items()}
    assert any(r["completion"] for r in gsm8k.values())
