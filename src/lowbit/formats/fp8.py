"""FP8 E4M3 (``torch.float8_e4m3fn``): weights as a level table, activations by PyTorch's cast.

Weights (kind ``fp8``): a lookup-table format (formats/levels.py) whose table is every E4M3 value
indexed by its byte, so a code *is* the E4M3 byte and ``scale = absmax / 448`` per block is
compressed-tensors' convention for ``type: float, num_bits: 8``. Rounding is to the nearest
level; an exact tie goes to the lower level (the table's rule), where a cast would go to the even
mantissa: the two differ only on exact midpoints.

Activations (``to_fp8``): the quotient ``x / scale`` is formed in float32 and saturated to ±448
before the cast (E4M3 has no infinity: an unsaturated overflow becomes NaN); the cast rounds to
nearest, ties to even, as the GPU's conversion instructions do, so the CPU emulation and
``torch._scaled_mm`` get bit-identical inputs.
"""
from __future__ import annotations

import torch

from .levels import register_levels
from .spec import FormatSpec

FP8_DTYPE = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# W8A8-FP8 weights: E4M3, one scale per output row.
FP8_ROWS = FormatSpec(kind="fp8", bits=8, group_size=-1)


@register_levels("fp8")
def e4m3_levels() -> torch.Tensor:
    """Every E4M3 value by byte. The NaN bytes 0x7F/0xFF read as ±448 so the table stays finite;
    the encoder takes the lowest byte of each value (0x7E, 0xFE, and +0 over −0), never them."""
    v = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).double()
    v[0x7F], v[0xFF] = E4M3_MAX, -E4M3_MAX
    return v


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` divided by ``scale`` (broadcast) in float32, saturated, cast to E4M3."""
    return (x.float() / scale.float()).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
