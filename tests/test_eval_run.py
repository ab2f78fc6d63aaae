"""eval.run on a tiny merged model: resuming a killed evaluation, rescoring, clear errors for bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

from abba.merge import merge
from eval.backends.hf import HFBackend
from eval.benchmarks import DataMissingError, resolve
from eval.rescore import main as rescore_main
from eval.run import SimulatedInterrupt, evaluate, load_config
from eval_helpers import abba_run, one_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def merged_model(tmp_path_factory):
    from abba.modeling import load_tokenizer
    from conftest import model_cfg

    root = tmp_path_factory.mktemp("merged")
    abba_run(root / "run", load_tokenizer(model_cfg("tiny_llama")))
    merge(root / "run" / "final", root / "model")
    return root / "model"


@pytest.fixture
def generated(monkeypatch):
    """Every prompt the HF backend is asked to generate for, in order."""
    prompts: list[str] = []
    original = HFBackend.generate

    def counting(self, batch_prompts, *args, **kwargs):
        prompts.extend(batch_prompts)
        yield from original(self, batch_prompts, *args, **kwargs)

    monkeypatch.setattr(HFBackend, "generate", counting)
    return prompts


def _config(model, out, *extra):
    return load_config([f"model_path={model}", f"output_dir={out}", "backend=hf", "batch_size=4", *extra])


def _lines(path):
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def test_killed_evaluation_resumes_and_scores_every_item_once(merged_model, tmp_path, generated, one_thread):
    out = tmp_path / "out"
    with pytest.raises(SimulatedInterrupt):
        evaluate(_config(merged_model, out, "benchmark=boolq", "limit=12", "interrupt_after=4"))
    samples = out / "samples_boolq.jsonl"
    first_ids = {r["id"] for r in _lines(samples)}
    assert len(first_ids) == 4 and not (out / "metrics.json").exists()
    with samples.open("a") as f:  # a kill in the middle of a write leaves a torn line
        f.write('{"id": "9", "prompt": "Below is')
    generated.clear()

    result = evaluate(_config(merged_model, out, "benchmark=boolq", "limit=12"))["boolq"]
    records = _lines(samples)
    assert sorted(r["id"] for r in records) == sorted(str(i) for i in range(12))  # each item exactly once
    prompts = {r["id"]: r["prompt"] for r in records}
    assert sorted(generated) == sorted(prompts[i] for i in prompts if i not in first_ids)  # only the missing ones
    # Independent scoring: first true/false in the lowercased completion equals the gold.
    expected = [(re.findall("true|false", r["completion"].lower()) or [None])[0] == r["gold"] for r in records]
    assert result["accuracy"] == pytest.approx(sum(expected) / 12)
    metrics = json.loads((out / "metrics.json").read_text())["boolq"]
    assert metrics["n"] == 12 and metrics["backend"] == "hf" and metrics["decoding"]["top_k"] == 40

    generated.clear()
    evaluate(_config(merged_model, out, "benchmark=boolq", "limit=12"))  # finished: nothing to generate
    assert generated == [] and len(_lines(samples)) == 12


def test_rescore_round_trips_a_samples_file(merged_model, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    result = evaluate(_config(merged_model, out, "benchmark=piqa", "limit=8"))["piqa"]
    assert rescore_main(["benchmark=piqa", f"input={out / 'samples_piqa.jsonl'}", f"output={tmp_path / 'r.jsonl'}"]) is None
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"accuracy={result['accuracy']}"
    original, rescored = _lines(out / "samples_piqa.jsonl"), _lines(tmp_path / "r.jsonl")
    assert [(r["prediction"], r["correct"]) for r in original] == [(r["prediction"], r["correct"]) for r in rescored]


def test_rescore_fills_in_math_records(shared_data, tmp_path, capsys):
    from eval.benchmarks import BENCHMARKS, load_items

    items = load_items(BENCHMARKS["math"], shared_data, limit=10)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": it.id, "completion": f"The answer is: {it.gold if i % 2 else 'zzz'}",
                                          "gold": it.gold}) + "\n" for i, it in enumerate(items)))
    rescore_main(["benchmark=math", f"input={source}", f"output={tmp_path / 'out.jsonl'}"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy=0.5"
    assert [r["correct"] for r in _lines(tmp_path / "out.jsonl")] == [bool(i % 2) for i in range(10)]


def test_missing_data_names_what_to_download_and_where(merged_model, tmp_path):
    with pytest.raises(DataMissingError, match=r"LLM-Adapters/tree/main/dataset/winogrande/test\.json at .*commonsense/winogrande/test\.json"):
        evaluate(_config(merged_model, tmp_path / "out", "benchmark=winogrande", f"paths.data_dir={tmp_path}"))


def test_benchmark_names_and_groups():
    assert resolve("arithmetic") == ["gsm8k", "math"]
    assert len(resolve("commonsense")) == 8 and resolve(["gsm8k", "boolq"]) == ["gsm8k", "boolq"]
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'"):
        resolve("gsm9k")


def test_stop_strings_end_a_sequence_and_are_cut(tokenizer):
    from eval.backends import truncate_at_stop
    from eval.backends.hf import StopOnStrings

    stop = ("Instruction:", "Instruction", "Response:", "Response")
    prompt = tokenizer(["Q: 2+2?"])["input_ids"][0]
    texts = [" So 4.\nThe answer is: 4\n\n### Instruction:\nNext", " So 4.\nThe answer is: 4"]
    rows = [prompt + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])  # left padded
    assert StopOnStrings(tokenizer, stop, prompt_length=len(prompt))(ids, None).tolist() == [True, False]
    assert truncate_at_stop(texts[0], stop) == " So 4.\nThe answer is: 4\n\n### "
    assert truncate_at_stop("Response: x Instruction", stop) == ""


def test_backend_choice(monkeypatch):
    import importlib.util

    from eval.backends import choose_backend, make_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend("auto") == "hf"
    with pytest.raises(ValueError, match="unknown backend 'tgi'"):
        choose_backend("tgi")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]"):
            make_backend("vllm", "unused")


def _hand_written_gsm8k(tmp_path, model_path):
    """Three GSM8K items and a samples file for them, as a finished earlier run of `model_path` left it."""
    data = tmp_path / "gsm8k.jsonl"
    golds = ["3", "10", "7"]
    data.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"work\n#### {g}"}) + "\n"
                            for i, g in enumerate(golds)))
    out = tmp_path / "out"
    out.mkdir()
    completions = ["The answer is: 2.6", "The answer is: 10", "The answer is: 6.9"]  # rounding makes 1 and 3 right
    (out / "samples_gsm8k.jsonl").write_text("".join(json.dumps(
        {"id": str(i), "prompt": f"q{i}?", "completion": c, "prediction": None, "gold": g, "correct": False,
         "model_path": str(model_path)}) + "\n" for i, (c, g) in enumerate(zip(completions, golds))))
    return data, out


def test_rerun_rescores_saved_completions_with_the_current_options(merged_model, tmp_path, generated):
    data, out = _hand_written_gsm8k(tmp_path, merged_model.resolve())
    args = ("benchmark=gsm8k", f"data_file={data}")
    rounded = evaluate(_config(merged_model, out, *args))["gsm8k"]
    assert generated == [] and rounded["accuracy"] == pytest.approx(3 / 3)  # round(2.6) = 3, round(6.9) = 7
    exact = evaluate(_config(merged_model, out, *args, "gsm8k_round_prediction=false"))["gsm8k"]
    assert generated == [] and exact["accuracy"] == pytest.approx(1 / 3) and not exact["scoring"]["gsm8k_round_prediction"]
    assert [r["correct"] for r in _lines(out / "samples_gsm8k.jsonl")] == [False, True, False]


def test_samples_of_another_model_are_refused(merged_model, tmp_path, generated):
    data, out = _hand_written_gsm8k(tmp_path, tmp_path / "some_other_model")
    with pytest.raises(ValueError, match="some_other_model"):
        evaluate(_config(merged_model, out, "benchmark=gsm8k", f"data_file={data}"))
    assert generated == [] and not (out / "metrics.json").exists()
