"""Two CPU processes (torchrun, gloo) under DeepSpeed ZeRO-2 and ZeRO-3: the run finishes (under ZeRO-2 after a
stop and a resume from an adapter-only DeepSpeed checkpoint), one adapter is saved and loads, and under ZeRO-3
(parameters partitioned, W0 gathered for the SVD) the initial ABBA factors equal a single-process initialisation
with the same seed. Issue 14: ZeRO-2 with bf16 on a bf16 base keeps the adapter float32 and equal to a
single-process run's, and save_pretrained gathers a ZeRO-3-partitioned adapter (persistence threshold 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file
from train_helpers import bf16_single_and_two_processes, run_train

from abba import ABBAConfig, get_abba_model, load_abba_model

pytestmark = pytest.mark.slow
# Accumulation 2 over 2 processes: 1 micro-batch of 8 each (a world size must divide it, abba/launch.py).
SHORT = ["experiment=smoke_arithmetic", "trainer.max_steps=12", "trainer.save_steps=6",
         "trainer.gradient_accumulation_steps=2"]


def _single_process_init():
    # The smoke experiment's adapter: r1 = r2 = 8, alpha 16, seed 0, on tiny_llama built with seed 0.
    return get_abba_model(tiny_model("tiny_llama", seed=0), ABBAConfig(r1=8, r2=8, alpha=16, seed=0)).adapter_state_dict()


def _check_trained_run(run_dir):
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["finished"] and info["global_step"] == 12
    final = run_dir / "final"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("final")) == ["final"]
    model = load_abba_model(tiny_model("tiny_llama", seed=0), final)
    trained = model.adapter_state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert max(v.abs().max() for k, v in trained.items() if k.endswith("abba_B2")) > 0  # B2 starts at 0
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(l == l for l in losses)
    return trained


def test_zero2_two_processes(excerpt_data, tmp_path):
    """Stopped after the step-6 checkpoint, whose DeepSpeed module state holds the adapter only (no frozen base),
    then resumed from it to the end."""
    run_dir = tmp_path / "run"
    args = SHORT + ["trainer=zero2", f"output_dir={run_dir}"]
    crashed = run_train(args + ["+debug.interrupt_at_step=6"], excerpt_data, tmp_path, nproc=2)
    assert crashed.returncode != 0 and not (run_dir / "final").exists()
    states = sorted((run_dir / "checkpoint-6").glob("global_step6/*model_states.pt"))
    assert states, sorted(p.name for p in (run_dir / "checkpoint-6").rglob("*"))
    module = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    frozen = {key for key in module if not key.rsplit(".", 1)[-1].startswith("abba_")}
    # DeepSpeed drops frozen parameters by name, so a tied output embedding (tiny_llama ties it) rides along
    assert module and frozen <= {"model.lm_head.weight"}, sorted(frozen)[:5]
    result = run_train(args + ["resume=true"], excerpt_data, tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_trained_run(run_dir)


@pytest.mark.parametrize("threshold", [None, 0], ids=["default-threshold", "threshold-0"])
def test_zero3_two_processes_initialises_like_one_process(excerpt_data, tmp_path, threshold):
    """With stage3_param_persistence_threshold=0 every tensor is partitioned, as at real sizes (the default keeps
    the tiny test tensors whole): W0 is gathered for the SVD and the adapter for every save."""
    run_dir = tmp_path / "run"
    key = "trainer.deepspeed.zero_optimization.stage3_param_persistence_threshold"
    extra = [] if threshold is None else [f"{key}={threshold}"]
    result = run_train(SHORT + ["trainer=zero3", "+debug.dump_init_adapter=true", f"output_dir={run_dir}", *extra],
                       excerpt_data, tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    initial = load_file(str(run_dir / "init_adapter" / "adapter_model.safetensors"))
    expected = _single_process_init()
    assert set(initial) == set(expected)
    for key in expected:
        torch.testing.assert_close(initial[key], expected[key], atol=1e-5, rtol=1e-5)
    trained = _check_trained_run(run_dir)
    assert max((trained[k] - initial[k]).abs().max() for k in initial) > 0


# ------------------------------------------------------------------ issue 14: ZeRO-2 with bf16 on a bf16 base
#: Both runs see the same micro-batches (accelerate gives batch 2k to rank 0 and 2k+1 to rank 1; the single run
#: accumulates both), compute under the same bf16 autocast and keep float32 factors, gradients and Adam state;
#: only the float32 order of the gradient sum may differ (relative 1e-7 per step; measured: bit-identical at two
#: processes). 1e-5 leaves room for that over 4 steps of lr 1e-2, and is 800x below what storing the factors in
#: bf16 did (2**-9 relative; measured 8.7e-3 max |diff| before the fix).
ZERO2_BF16_ATOL = 1e-5


def test_zero2_bf16_keeps_a_float32_adapter_equal_to_one_process(excerpt_data, tmp_path):
    """Issue 14: DeepSpeed's bf16 mode cast the float32 factors to bf16 (saved bf16, 0.4-0.9% off the single run)."""
    single, zero2 = bf16_single_and_two_processes("zero2", excerpt_data, tmp_path)
    expected = load_file(str(single / "final" / "adapter_model.safetensors"))
    got = load_file(str(zero2 / "final" / "adapter_model.safetensors"))
    assert set(got) == set(expected) and {v.dtype for v in got.values()} == {torch.float32}
    assert max(v.abs().max() for k, v in expected.items() if k.endswith("abba_B2")) > 1e-3  # trained: B2 = 0 at init
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ZERO2_BF16_ATOL, rtol=0)


def run_two_processes(script_name: str, out: Path) -> None:
    """Run tests/<script_name> OUT under torchrun with 2 gloo processes; fail with its stderr if it fails."""
    import os
    import socket
    import subprocess
    import sys

    script = Path(__file__).with_name(script_name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(script.parents[1]))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                             "127.0.0.1", "--master_port", str(port), str(script), str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_save_pretrained_gathers_a_zero3_partitioned_adapter(tmp_path):
    """Issue 14: ABBAModel.save_pretrained on a ZeRO-3-partitioned model wrote zero-size tensors."""
    run_two_processes("zero3_save_pretrained.py", tmp_path)
    assert (tmp_path / "partitioned.txt").read_text() == "True"  # the adapter really was partitioned
    expected = load_file(str(tmp_path / "expected.safetensors"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == set(expected)
    for key in expected:
        assert torch.equal(saved[key], expected[key]), key
    model = load_abba_model(tiny_model("tiny_llama", seed=0), tmp_path / "adapter")  # and it loads
    assert all(v.numel() for v in model.adapter_state_dict().values())


def test_save_pretrained_refuses_partitioned_factors_without_a_process_group(tmp_path):
    model = get_abba_model(tiny_model("tiny_llama", seed=0), ABBAConfig(r1=4, r2=4, alpha=8))
    layer = next(model.abba_layers())[1]
    layer.abba_B2.ds_id = 0  # what ZeRO-3 marks a partitioned parameter with
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3") as error:
        model.save_pretrained(tmp_path / "adapter")
    assert len(str(error.value).splitlines()) == 1 and not (tmp_path / "adapter").exists()


def test_load_adapter_fills_a_zero3_partitioned_adapter(tmp_path):
    """ABBAModel.load_adapter (the trainer's resume path) on a ZeRO-3-partitioned model: the factors it holds
    afterwards, gathered again by save_pretrained, are exactly the saved ones."""
    run_two_processes("zero3_load_adapter.py", tmp_path)
    assert (tmp_path / "partitioned.txt").read_text() == "True"  # the adapter really was partitioned
    expected = load_file(str(tmp_path / "source" / "adapter_model.safetensors"))
    loaded = load_file(str(tmp_path / "loaded" / "adapter_model.safetensors"))
    assert set(loaded) == set(expected) and max(v.abs().max() for v in expected.values()) > 0
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key
