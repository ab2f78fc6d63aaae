"""Shared by the torchrun scripts zero3_save_pretrained.py and zero3_load_adapter.py: partition an ABBA model's
trainable parameters with DeepSpeed ZeRO-3 at persistence threshold 0 (every parameter partitioned, however small)."""

import deepspeed
import torch

ZERO3 = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
         "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}


def partition_with_zero3(model):
    """Wrap `model` in a ZeRO-3 engine (AdamW over its trainable parameters). Returns (engine, partitioned):
    keep the engine referenced while the model is used; partitioned is True when the first ABBA layer's B2 really
    is partitioned (an empty local tensor with a DeepSpeed id)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ZERO3,
                         optimizer=torch.optim.AdamW(trainable, lr=1e-3))
    layer = next(model.abba_layers())[1]
    return engine, layer.abba_B2.numel() == 0 and hasattr(layer.abba_B2, "ds_id")
