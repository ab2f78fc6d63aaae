"""ABBA: Hadamard-product adapters dW = s * (B1 A1) ⊙ (B2 A2) for fine-tuning large language models.

Public API: ABBAConfig, ABBALinear, ABBAModel, get_abba_model, load_abba_model.
"""

from .config import ABBAConfig
from .layer import ABBALinear
from .model import ABBAModel, get_abba_model, load_abba_model

__all__ = ["ABBAConfig", "ABBALinear", "ABBAModel", "get_abba_model", "load_abba_model"]
__version__ = "0.1.0"
