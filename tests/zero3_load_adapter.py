"""Run by tests/test_train_distributed.py under torchrun (2 CPU processes): save an ABBA adapter from a plain model
to OUT/source, partition another ABBA model (other initialisation) with DeepSpeed ZeRO-3 at persistence threshold
0, call ABBAModel.load_adapter(OUT/source) on every rank, then save_pretrained it to OUT/loaded for the test to
compare with OUT/source. Usage: zero3_load_adapter.py OUT"""

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_model  # noqa: E402
from zero3_partition import partition_with_zero3  # noqa: E402

from abba import ABBAConfig, get_abba_model  # noqa: E402

out = Path(sys.argv[1])
deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
if rank == 0:
    source = get_abba_model(tiny_model("tiny_llama", seed=0), ABBAConfig(r1=4, r2=4, alpha=8, seed=1))
    with torch.no_grad():  # B2 = 0 at init: fill it so a lost or zeroed tensor shows
        for _, layer in source.abba_layers():
            layer.abba_B2.copy_(torch.randn(layer.abba_B2.shape, generator=torch.Generator().manual_seed(1)))
    source.save_pretrained(out / "source")
torch.distributed.barrier()
model = get_abba_model(tiny_model("tiny_llama", seed=0), ABBAConfig(r1=4, r2=4, alpha=8, seed=0))
engine, partitioned = partition_with_zero3(model)
model.load_adapter(out / "source")  # every rank: gathers, overwrites, partitions again
model.save_pretrained(out / "loaded")  # every rank: gathers collectively, rank 0 writes
if rank == 0:
    (out / "partitioned.txt").write_text(str(partitioned))
torch.distributed.barrier()
