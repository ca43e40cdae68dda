"""lowbit: post-training quantization of causal language models."""
from __future__ import annotations

__version__ = "0.1.0"

from .formats import FormatSpec  # noqa: E402
from .recipes import Recipe, load_preset  # noqa: E402
from .quantize import quantize_model  # noqa: E402
from .io import hf_quantizer  # noqa: E402,F401  (registers quant_method "lowbit" with transformers)

__all__ = ["FormatSpec", "Recipe", "load_preset", "quantize_model", "__version__"]
