"""Issue 14, ZeRO-3 with bf16 on a bf16 base: as under ZeRO-2, DeepSpeed's bf16 mode is swapped for its
torch_autocast so the adapter, its gradients, their reduction and Adam's state stay float32; the base is still
partitioned in bf16 (zero.Init's own dtype), and RoPE's inv_freq stays float32 as in one process
(configs/trainer/zero3.yaml, data_types.keep_in_fp32_modules). What is left is tested against a single-process
run with the stated tolerance (ZERO3_BF16_*)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import bf16_single_and_two_processes, train_env

REPO = Path(__file__).resolve().parents[1]

_BUILD = r"""
import json, sys, torch
sys.path.insert(0, {tests!r})
from train_helpers import compose_train
from abba.base_model import build_model
from abba.train_model import zero3_init_dtype
from abba.trainer_build import training_arguments

cfg = compose_train("experiment=smoke_arithmetic", "model.dtype=bfloat16", "trainer.bf16=true", "trainer=zero3")
args = training_arguments(cfg, __import__("pathlib").Path({run_dir!r}))
ds = args.hf_deepspeed_config.config
with zero3_init_dtype(torch.bfloat16):
    model = build_model(cfg.model, dtype=torch.bfloat16, seed=0)
single = build_model(cfg.model, dtype=torch.bfloat16, seed=0)
print(json.dumps({{
    "ds_bf16": ds["bf16"]["enabled"], "autocast": ds["torch_autocast"],
    "partitioned": all(hasattr(p, "ds_id") for p in model.parameters()),
    "param_dtypes": sorted({{str(p.dtype) for p in model.parameters()}}),
    "buffers": {{k: [str(b.dtype), str(dict(single.named_buffers())[k].dtype),
                    (b.double() - dict(single.named_buffers())[k].double()).abs().max().item()]
                for k, b in model.named_buffers()}},
}}))
"""


def test_zero3_bf16_builds_a_bf16_base_with_float32_rope_under_autocast(tmp_path):
    """With DeepSpeed's bf16 mode off, transformers' zero.Init would read float32 from the config: a 7B base held
    in float32. The base must come out partitioned in bf16, its inv_freq float32 and equal to one process's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(train_env(tmp_path), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    code = _BUILD.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["ds_bf16"] is False and got["autocast"]["enabled"] and got["autocast"]["dtype"] == "bfloat16"
    assert got["autocast"]["lower_precision_safe_modules"] == []  # no gradient reduced in bf16
    assert got["partitioned"] and got["param_dtypes"] == ["torch.bfloat16"]
    assert got["buffers"] and all("inv_freq" in k for k in got["buffers"])
    for name, (dtype, single_dtype, diff) in got["buffers"].items():
        assert dtype == single_dtype == "torch.float32" and diff == 0, (name, dtype, single_dtype, diff)


# The runs are train_helpers.BF16_SMOKE, as in tests/test_train_distributed.py's ZeRO-2 bf16 check.
#: What is left is not bf16 storage: float32 ZeRO-3 and one-process runs already differ by ~1e-6 (the order of
#: ZeRO-3's float32 step), and bf16 compute amplifies that. A factor entry within 1e-7 of a bf16 rounding boundary
#: lands on the other bf16 neighbour (a 2^-8 relative change in the compute copy), and Adam's early steps are
#: ~lr * sign(g) whatever |g| is, so an entry whose gradient is near 0 can move by a whole step the other way.
#: Per entry that is bounded by the sum of the step sizes, sum(lr_t) = 2e-2 (measured max 7.1e-3, mean 7.7e-6;
#: 0.6% of entries differ by more than 1e-4). The merged update dW = s (B1 A1) * (B2 A2) of each layer is the
#: better measure: measured within 0.55% relative (Frobenius), bound 1.5%, where bf16 inv_freq gave 3.5%.
ZERO3_BF16_ATOL = 2e-2
ZERO3_BF16_DW_RTOL = 1.5e-2


def _delta_weights(adapter: dict) -> dict:
    layers = sorted({k.rsplit(".", 1)[0] for k in adapter})
    return {l: (adapter[f"{l}.abba_B1"] @ adapter[f"{l}.abba_A1"]) * (adapter[f"{l}.abba_B2"] @ adapter[f"{l}.abba_A2"])
            for l in layers}


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_zero3_bf16_keeps_a_float32_adapter_close_to_one_process(excerpt_data, tmp_path):
    """Issue 14: under DeepSpeed's bf16 mode (and bf16 inv_freq) ZeRO-3 was 9.6e-3 off, dW 3.5% off."""
    single, zero3 = bf16_single_and_two_processes("zero3", excerpt_data, tmp_path)
    # Step 1 trains nothing yet (B2 = 0, lr 0): it is the bf16 base's forward alone, identical in both runs
    # (measured bit-identical; bf16 inv_freq put it 2.5e-6 relative off).
    expected_losses, losses = _losses(single), _losses(zero3)
    assert len(losses) == len(expected_losses) == 4
    assert losses[0] == pytest.approx(expected_losses[0], rel=1e-6, abs=0)
    expected = load_file(str(single / "final" / "adapter_model.safetensors"))
    got = load_file(str(zero3 / "final" / "adapter_model.safetensors"))
    assert set(got) == set(expected) and {v.dtype for v in got.values()} == {torch.float32}
    assert max(v.abs().max() for k, v in expected.items() if k.endswith("abba_B2")) > 1e-3  # trained: B2 = 0 at init
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ZERO3_BF16_ATOL, rtol=0)
    expected_dw, got_dw = _delta_weights(expected), _delta_weights(got)
    worst = max(((got_dw[l] - expected_dw[l]).norm() / expected_dw[l].norm()).item() for l in expected_dw)
    assert worst <= ZERO3_BF16_DW_RTOL, worst
