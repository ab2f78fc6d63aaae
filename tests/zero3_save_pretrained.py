"""Run by tests/test_train_distributed.py under torchrun (2 CPU processes): partition an ABBA model with DeepSpeed
ZeRO-3 at persistence threshold 0, call ABBAModel.save_pretrained on every rank, and write the adapter as it was
before partitioning to OUT/expected.safetensors for the test to compare. Usage: zero3_save_pretrained.py OUT"""

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_model  # noqa: E402
from zero3_partition import partition_with_zero3  # noqa: E402

from abba import ABBAConfig, get_abba_model  # noqa: E402

out = Path(sys.argv[1])
deepspeed.init_distributed(dist_backend="gloo")
model = get_abba_model(tiny_model("tiny_llama", seed=0), ABBAConfig(r1=4, r2=4, alpha=8, seed=0))
with torch.no_grad():  # B2 = 0 at init: fill it so a lost or zeroed tensor shows
    for _, layer in model.abba_layers():
        layer.abba_B2.copy_(torch.randn(layer.abba_B2.shape, generator=torch.Generator().manual_seed(1)))
expected = {k: v.clone() for k, v in model.adapter_state_dict().items()}
engine, partitioned = partition_with_zero3(model)
model.save_pretrained(out / "adapter")  # every rank: gathers collectively, rank 0 writes
if torch.distributed.get_rank() == 0:
    save_file(expected, str(out / "expected.safetensors"))
    (out / "partitioned.txt").write_text(str(partitioned))
torch.distributed.barrier()
