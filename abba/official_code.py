"""`official_code=true`: run as the authors' released code does instead of as the paper describes.

Each change is one item of FACTS.md "Where the authors' released code differs from the paper":
  1. r1 = r2 = the LoRA rank argument: the paper's "ABBA r" (= r1 + r2) becomes r1 = r2 = r.
  2. s = alpha (scaling=official).        3. A2 Kaiming with a = 0; adapter in the base dtype.
  4. no ABBA dropout (baselines keep theirs).  5. AdamW weight decay 0.01 (torch's default, passed by that code).
  6. MetaMathQA: the first 50,000 rows.   7. commonsense training prompt indented by 12 spaces.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict


def apply_official_code(cfg: DictConfig) -> None:
    """Rewrite `cfg` in place (the resolved config.yaml then records what actually ran)."""
    with open_dict(cfg):
        peft = cfg.peft
        if peft.method == "abba":
            rank = int(peft.r1) + int(peft.r2)
            peft.r1 = peft.r2 = rank
            peft.scaling = "official"
            peft.kaiming_a = 0.0
            peft.adapter_dtype = "base"
            peft.dropout = 0.0  # the released ABBA layer creates its dropout but never applies it
        peft.weight_decay = 0.01  # the released training script passes torch's AdamW (default 0.01) to the Trainer
        if cfg.data.format == "metamathqa":
            cfg.data.subset_size = 50000
            cfg.data.subset_mode = "first"
        if cfg.data.task == "commonsense":
            cfg.data.official_indent = True
