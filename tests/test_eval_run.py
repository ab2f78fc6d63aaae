"""eval.run on a tiny merged model: resuming a killed evaluation, rescoring, clear errors for bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

from abba.merge import merge
from eval.backends.hf import HFBackend
from eval.benchmarks import BENCHMARKS, DataMissingError, load_items, resolve
from eval.rescore import main as rescore_main
from eval.resume import SimulatedInterrupt
from eval.run import evaluate, load_config
from conftest import EXCERPTS
from eval_helpers import abba_run, one_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def merged_model(tmp_path_factory):
    from abba.base_model import load_tokenizer
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
    """The excerpts in tests/data are the data folder (a later paths.data_dir= in `extra` wins)."""
    return load_config([f"model_path={model}", f"output_dir={out}", "backend=hf", "batch_size=4",
                        f"paths.data_dir={EXCERPTS}", *extra])


def _lines(path):
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def test_killed_evaluation_resumes_and_scores_every_item_once(merged_model, tmp_path, generated, one_thread):
    out = tmp_path / "out"
    with pytest.raises(SimulatedInterrupt):
        evaluate(_config(merged_model, out, "benchmark=boolq", "limit=12", "+debug.interrupt_after=4"))
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


def test_rescore_fills_in_math_records(excerpt_data, tmp_path, capsys):
    from eval.benchmarks import BENCHMARKS, load_items

    items = load_items(BENCHMARKS["math"], excerpt_data, limit=10)
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


def test_the_interrupt_switch_is_a_debug_key_not_a_config_key():
    """`+debug.interrupt_after=N` passes eval.run's command-line check and reaches the config; the old
    `interrupt_after=N` is no key of configs/eval.yaml any more, so it is refused as one nothing reads."""
    from omegaconf import OmegaConf

    from abba.hydra_check import CommandLineError, check_command_line
    from abba.layout import REPO_ROOT

    fixed = ["benchmark=boolq", "model_path=M", "output_dir=O"]
    check_command_line(REPO_ROOT / "configs", "eval", [*fixed, "+debug.interrupt_after=3"])
    assert OmegaConf.select(load_config([*fixed, "+debug.interrupt_after=3"]), "debug.interrupt_after") == 3
    assert OmegaConf.select(load_config(fixed), "debug.interrupt_after", default=None) is None
    with pytest.raises(CommandLineError, match="interrupt_after"):
        check_command_line(REPO_ROOT / "configs", "eval", [*fixed, "interrupt_after=3"])


@pytest.mark.parametrize("switch, needle", [
    ("+debug.interrupt_afer=3", "unknown test switch debug.interrupt_afer (did you mean: debug.interrupt_after)"),
    ("+debug.interrupt_after=0", "debug.interrupt_after=0: must be an integer >= 1 or null"),
    ("+debug.interrupt_after=abc", "debug.interrupt_after=abc: must be an integer >= 1 or null"),
])
def test_a_mistyped_test_switch_is_refused_before_anything_loads(switch, needle):
    """A typo in the switch's name would otherwise be ignored (the run evaluates everything) and a bad value would
    fail after the model has loaded: both are usage errors, found by the command-line check."""
    from abba.cli import UsageError
    from eval.checks import check_values

    with pytest.raises(UsageError) as error:
        check_values(load_config(["benchmark=boolq", "model_path=M", "output_dir=O", switch]))
    assert needle in str(error.value) and len(str(error.value).splitlines()) == 1


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
    prompts = [item.prompt for item in load_items(BENCHMARKS["gsm8k"], tmp_path, data)]  # as the run built them
    (out / "samples_gsm8k.jsonl").write_text("".join(json.dumps(
        {"id": str(i), "prompt": prompts[i], "completion": c, "prediction": None, "gold": g, "correct": False,
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


# ----------------------------------------- commonsense stop strings (the released evaluator's; issue 10, section 6)
ALPACA_STOP = ["Instruction:", "Instruction", "Response:", "Response"]


def test_commonsense_hf_generation_stops_and_is_cut_at_the_stop_strings(merged_model, tmp_path, monkeypatch, tokenizer):
    from transformers.generation.utils import GenerationMixin

    data = tmp_path / "boolq.json"
    data.write_text(json.dumps([{"instruction": f"Is {i} even?", "input": "", "output": "", "answer": gold}
                                for i, gold in enumerate(["true", "false", "true"])]))
    tail = tokenizer(" I think\n\n### Response: true", add_special_tokens=False, return_tensors="pt")["input_ids"]
    stopped = []

    def generate(self, input_ids=None, stopping_criteria=None, **kwargs):  # the model "writes" a new prompt block
        output = torch.cat([input_ids, tail.expand(len(input_ids), -1)], dim=1)
        stopped.extend(stopping_criteria[0](output, None).tolist())  # HF's own stop check on these sequences
        return output

    monkeypatch.setattr(GenerationMixin, "generate", generate)
    out = tmp_path / "out"
    result = evaluate(_config(merged_model, out, "benchmark=boolq", f"data_file={data}"))["boolq"]
    assert stopped == [True, True, True]
    records = _lines(out / "samples_boolq.jsonl")
    assert [r["completion"] for r in records] == [" I think\n\n### "] * 3  # uncut, "true" would score 2 of 3
    assert all(r["prediction"] is None and r["correct"] is False for r in records)
    assert result["accuracy"] == 0.0 and result["n_invalid"] == 3
    assert json.loads((out / "metrics.json").read_text())["boolq"]["decoding"]["stop"] == ALPACA_STOP


def test_commonsense_vllm_generation_gets_the_stop_strings_and_is_cut(monkeypatch):
    import sys
    import types

    from eval.backends.vllm import VLLMBackend
    from eval.benchmarks import BENCHMARKS

    params = {}

    class LLM:
        def __init__(self, **kwargs):
            pass

        def generate(self, prompts, sampling, use_tqdm=True):  # as if vLLM had ignored the stop strings
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="answer1\n\n### Instruction: answer2")])
                    for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: params.update(kw)))
    bench = BENCHMARKS["ARC-Easy"]
    completions = [c for batch in VLLMBackend("unused").generate(["p1", "p2"], bench.decoding, bench.stop, seed=3)
                   for _, c in batch]
    assert params["stop"] == ALPACA_STOP and params["temperature"] == 0.1 and params["top_k"] == 40
    assert completions == ["answer1\n\n### "] * 2


def test_rescore_cuts_saved_commonsense_completions_at_the_stop_strings(tmp_path, capsys):
    # A samples file written before the stop strings were added: rescoring gives the released evaluator's scores.
    source = tmp_path / "in.jsonl"
    pairs = [("Response: answer2", "answer2"), ("answer1\n\n### Instruction: Pick one.\n\n### Response: answer2", "answer1"),
             ("answer2", "answer2"), ("answer3\n### Response: answer4", "answer4")]
    source.write_text("".join(json.dumps({"id": str(i), "completion": c, "gold": g}) + "\n" for i, (c, g) in enumerate(pairs)))
    rescore_main(["benchmark=ARC-Easy", f"input={source}", f"output={tmp_path / 'out.jsonl'}"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy=0.5"
    assert [r["prediction"] for r in _lines(tmp_path / "out.jsonl")] == [None, "answer1", "answer2", "answer3"]


def test_other_generation_settings_regenerate_never_reuse(merged_model, tmp_path, generated, one_thread):
    """Issue 11: evaluating into a folder with max_new_tokens=16, then without it, reused the 16-token
    completions while metrics.json claimed 256. Every changed setting now regenerates what it changes."""
    out = tmp_path / "out"
    short = evaluate(_config(merged_model, out, "benchmark=boolq", "limit=4", "max_new_tokens=4"))["boolq"]
    records = _lines(out / "samples_boolq.jsonl")
    assert len(generated) == 4 and all(r["generation"]["decoding"]["max_new_tokens"] == 4 for r in records)
    generated.clear()
    evaluate(_config(merged_model, out, "benchmark=boolq", "limit=4", "max_new_tokens=4"))  # same: all reused
    assert generated == []
    full = evaluate(_config(merged_model, out, "benchmark=boolq", "limit=4"))["boolq"]
    records = _lines(out / "samples_boolq.jsonl")
    assert len(generated) == 4 and len(records) == 4  # every item generated again, none kept twice
    assert {r["generation"]["decoding"]["max_new_tokens"] for r in records} == {full["decoding"]["max_new_tokens"]}
    assert short["decoding"]["max_new_tokens"] == 4 and full["decoding"]["max_new_tokens"] > 4
    generated.clear()
    evaluate(_config(merged_model, out, "benchmark=boolq", "limit=4", "seed=1"))  # another sampling seed
    assert len(generated) == 4


def test_rescore_refuses_a_samples_file_of_another_benchmark(tmp_path, capsys):
    """Issue 11: `eval.rescore benchmark=math` on a GSM8K samples file printed accuracy=0.01 with no warning."""
    record = {"id": "0", "prompt": "p", "completion": "The answer is: 18", "gold": "18", "prediction": None,
              "correct": None}
    tagged = tmp_path / "renamed.jsonl"
    tagged.write_text(json.dumps({**record, "benchmark": "gsm8k"}) + "\n")
    legacy = tmp_path / "samples_gsm8k.jsonl"  # written before records named their benchmark
    legacy.write_text(json.dumps(record) + "\n")
    for path, says in ((tagged, "its records say so"), (legacy, "its name says so")):
        with pytest.raises(SystemExit) as exit_info:
            rescore_main(["benchmark=math", f"input={path}", f"output={tmp_path / 'out.jsonl'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(err) == 1 and f"holds samples of gsm8k ({says}), not math" in err[0]
        assert "pass benchmark=gsm8k" in err[0] and not (tmp_path / "out.jsonl").exists()
    rescore_main(["benchmark=gsm8k", f"input={tagged}", f"output={tmp_path / 'out.jsonl'}"])  # its own: scored
    assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy=1.0"


# ------------------------------------------------------- issue 14: a sample depends only on (seed, item)
def test_sampled_completions_do_not_depend_on_batch_size_or_resuming(merged_model, tmp_path, generated, one_thread):
    """The HF backend seeded once per batch: batch_size=8 instead of 4 changed 16 of 16 completions and a resumed
    run 8 of 16. Each item now has its own random stream, seeded from (seed, benchmark/id)."""
    def run(out, *extra):
        cfg = load_config([f"model_path={merged_model}", f"output_dir={out}", "backend=hf", "benchmark=ARC-Easy",
                           "limit=8", f"paths.data_dir={EXCERPTS}", *extra])
        evaluate(cfg)
        return {r["id"]: r["completion"] for r in _lines(out / "samples_ARC-Easy.jsonl")}

    assert BENCHMARKS["ARC-Easy"].decoding.do_sample
    by_size = {size: run(tmp_path / f"bs{size}", f"batch_size={size}") for size in (1, 4, 8)}
    assert len(by_size[1]) == 8 and by_size[1] == by_size[4] == by_size[8]
    assert run(tmp_path / "seed7", "batch_size=4", "seed=7") != by_size[4]  # the seed does decide the samples

    resumed = tmp_path / "resumed"
    with pytest.raises(SimulatedInterrupt):
        run(resumed, "batch_size=4", "+debug.interrupt_after=3")  # killed after the first batch of 4
    assert len(_lines(resumed / "samples_ARC-Easy.jsonl")) == 4
    assert run(resumed, "batch_size=4") == by_size[4]

    metrics = json.loads((tmp_path / "bs8" / "metrics.json").read_text())["ARC-Easy"]
    assert metrics["batch_size"] == 8 and metrics["dtype"] == "auto" and metrics["model_dtype"] == ["float32"]
    # A file sampled under the old one-seed-per-batch scheme (no "sampling" in its records) is generated again.
    samples = tmp_path / "bs8" / "samples_ARC-Easy.jsonl"
    records = _lines(samples)
    assert {r["generation"]["sampling"] for r in records} == {"per-item-v1"}
    assert all("batch_size" not in r["generation"] for r in records)
    for r in records:
        del r["generation"]["sampling"]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    generated.clear()
    assert run(tmp_path / "bs8", "batch_size=8") == by_size[8] and len(generated) == 8


def test_vllm_gets_one_seed_per_request_whatever_the_chunking(monkeypatch):
    import sys
    import types

    from eval.backends.vllm import VLLMBackend

    requests = []

    class LLM:
        def __init__(self, **kwargs):
            pass

        def generate(self, prompts, sampling, use_tqdm=True):
            assert isinstance(sampling, list) and len(sampling) == len(prompts)  # one SamplingParams per request
            requests.extend(zip(prompts, sampling))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="answer1")]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    decoding = BENCHMARKS["ARC-Easy"].decoding
    keys = [f"ARC-Easy/{i}" for i in range(5)]

    def seeds(chunk_size, order, seed=42):
        requests.clear()
        backend = VLLMBackend("unused", chunk_size=chunk_size)
        list(backend.generate([f"p{i}" for i in order], decoding, (), seed=seed, keys=[keys[i] for i in order]))
        return {prompt: params["seed"] for prompt, params in requests}

    one_chunk = seeds(8, range(5))
    assert seeds(2, [4, 2, 0, 3, 1]) == one_chunk  # chunking and order do not move a seed
    assert len(set(one_chunk.values())) == 5  # every item its own stream
    assert seeds(8, range(5), seed=43) != one_chunk
    requests.clear()
    list(VLLMBackend("unused").generate(["p"], BENCHMARKS["gsm8k"].decoding, (), seed=42))
    assert "seed" not in requests[0][1] and requests[0][1]["temperature"] == 0.0  # greedy: no seed


def test_a_model_replaced_at_the_same_path_is_evaluated_again(tmp_path, generated, one_thread):
    """Found by a fresh-clone review: a run retrained with overwrite=true and merged again to the same folder kept
    the old model's completions (eval.run knew a model only by its path). Records now carry a fingerprint of the
    model folder; a changed model makes them again."""
    from abba.base_model import load_tokenizer
    from conftest import model_cfg

    tokenizer = load_tokenizer(model_cfg("tiny_llama"))
    abba_run(tmp_path / "run_a", tokenizer, seed=3)
    abba_run(tmp_path / "run_b", tokenizer, seed=4)
    model, out = tmp_path / "merged", tmp_path / "out"
    merge(tmp_path / "run_a" / "final", model)
    evaluate(_config(model, out, "benchmark=boolq", "limit=3", "nll=true"))
    first = {r["id"]: r["completion"] for r in _lines(out / "samples_boolq.jsonl")}
    first_nll = {r["id"]: r["nll_sum"] for r in _lines(out / "nll_boolq.jsonl")}
    assert len(generated) == 3
    generated.clear()
    evaluate(_config(model, out, "benchmark=boolq", "limit=3", "nll=true"))  # the same model: all reused
    assert generated == []
    merge(tmp_path / "run_b" / "final", model, overwrite=True)  # another model, same path
    evaluate(_config(model, out, "benchmark=boolq", "limit=3", "nll=true"))
    assert len(generated) == 3  # every item generated again
    second_nll = {r["id"]: r["nll_sum"] for r in _lines(out / "nll_boolq.jsonl")}
    assert len(second_nll) == 3 and all(second_nll[k] != first_nll[k] for k in first_nll)  # NLLs re-scored too
    samples = _lines(out / "samples_boolq.jsonl")
    assert len(samples) == 3 and set(first) == {r["id"] for r in samples}
