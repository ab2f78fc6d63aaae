"""ABBAConfig: every knob of an ABBA adapter, validated on construction.

The defaults follow the paper (arXiv 2505.14238 v4, Sec. 2). The authors' released code differs in a few
places; each difference is reachable through a named option here (see the `scaling`, `kaiming_a` and
`adapter_dtype` fields) and listed in the README under "Known differences".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: The seven projection layers of a Llama/Mistral/Gemma decoder block, the paper's target set.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

SCALINGS = ("paper", "official")
INITS = ("svd", "kaiming")
FORWARDS = ("auto", "khatri_rao", "dense")
ADAPTER_DTYPES = ("float32", "base")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class ABBAConfig:
    """Configuration of an ABBA adapter: dW = s * (B1 A1) ⊙ (B2 A2) on every targeted linear layer."""

    r1: int = field(default=16, metadata={"help": "Rank of the first pair (B1: d_out x r1, A1: r1 x d_in)."})
    r2: int = field(default=16, metadata={"help": "Rank of the second pair (B2: d_out x r2, A2: r2 x d_in)."})
    alpha: float = field(
        default=32.0,
        metadata={"help": "Scale parameter. s = alpha^2 / sqrt(r1 r2) ('paper') or s = alpha ('official')."},
    )
    dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the adapter path's input, in [0, 1). The official code never applies it."},
    )
    target_modules: list[str] | str = field(
        default_factory=lambda: list(LLAMA_TARGETS),
        metadata={
            "help": "Names of nn.Linear modules to adapt: a list matched against the last path component "
            "(e.g. 'q_proj') or the full dotted path, or a single regex matched (fullmatch) against full paths."
        },
    )
    scaling: str = field(
        default="paper",
        metadata={"help": "'paper': s = alpha^2/sqrt(r1*r2) (rank-stable); 'official': s = alpha (released code)."},
    )
    init: str = field(
        default="svd",
        metadata={
            "help": "'svd': B1 A1 = rank-r1 truncated SVD of W0, B2 = 0, A2 Kaiming-uniform (paper). "
            "'kaiming': A1, A2, B1 Kaiming-uniform, B2 = 0 (ablation). dW = 0 at init either way."
        },
    )
    forward: str = field(
        default="auto",
        metadata={
            "help": "'khatri_rao': run the update as a rank r1*r2 LoRA without building dW; 'dense': build dW; "
            "'auto': Khatri-Rao when r1*r2 < d_in*d_out/(d_in+d_out), per layer."
        },
    )
    kaiming_a: float = field(
        default=math.sqrt(5),
        metadata={"help": "Negative slope for the Kaiming-uniform init of A2 (peft LoRA's sqrt(5); official code: 0)."},
    )
    adapter_dtype: str = field(
        default="float32",
        metadata={"help": "'float32': adapter parameters in fp32 (default); 'base': the base weight's dtype (official code)."},
    )
    svd_niter: int = field(
        default=4, metadata={"help": "Subspace iterations of torch.svd_lowrank for the 'svd' init."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the adapter init (SVD sketch and Kaiming draws)."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model the adapter was trained on; recorded in adapter_config.json."}
    )

    def __post_init__(self) -> None:
        for name in ("r1", "r2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ABBAConfig.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"ABBAConfig.alpha must be a positive finite number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ABBAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (
            ("scaling", SCALINGS),
            ("init", INITS),
            ("forward", FORWARDS),
            ("adapter_dtype", ADAPTER_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ABBAConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.target_modules, (tuple, list)):
            self.target_modules = [str(t) for t in self.target_modules]
        if not self.target_modules:
            raise ValueError("ABBAConfig.target_modules is empty: name at least one module (e.g. 'q_proj')")
        if self.svd_niter < 0:
            raise ValueError(f"ABBAConfig.svd_niter must be >= 0, got {self.svd_niter!r}")

    @property
    def scale(self) -> float:
        """The scalar s multiplying (B1 A1) ⊙ (B2 A2)."""
        if self.scaling == "paper":
            return float(self.alpha) ** 2 / math.sqrt(self.r1 * self.r2)
        return float(self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter_type": "abba", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ABBAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"adapter_type"})
        if unknown:
            raise ValueError(f"unknown ABBAConfig keys {unknown}; known keys: {sorted(known)}")
        if data.get("adapter_type", "abba") != "abba":
            raise ValueError(f"not an ABBA adapter config (adapter_type={data['adapter_type']!r})")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ABBAConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: is this an ABBA adapter folder?")
        return cls.from_dict(json.loads(path.read_text()))
