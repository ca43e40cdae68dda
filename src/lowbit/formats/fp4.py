"""FP4 E2M1: the 4-bit float of the OCP Microscaling (MX) spec, used by MXFP4 and NVFP4.

A code is ``s e1 e0 m`` (sign, 2 exponent bits with bias 1, 1 mantissa bit): exponent 0 is
subnormal, ``m · 0.5``; otherwise ``2^(e−1) · (1 + m/2)``. The 8 magnitudes are
0, 0.5, 1, 1.5, 2, 3, 4, 6, and code ``q + 8`` is the negative of code ``q`` (code 8 is −0,
never produced by the encoder, which prefers +0). There is no infinity or NaN.

Keeping the codes as the E2M1 bit patterns (not as sorted indices) means MXFP4/NVFP4 exports
are a repacking, not a re-encoding (``io/ct_fp4.py``). The block scale comes in three kinds:

- a plain float (``scale_dtype`` None or a float dtype; presets ``fp4``, ``fp4-dq``):
  ``absmax / 6`` rounded up (``formats/levels.py``), so each block's largest weight lands on ±6;
  optionally double-quantized;
- ``e8m0`` (MXFP4, preset ``mxfp4``, blocks of 32): a power of two stored as a biased exponent;
- ``e4m3`` (NVFP4, preset ``nvfp4``, blocks of 16): an FP8 E4M3 block scale divided by one
  float32 global scale per tensor.

The last two are chosen and coded as compressed-tensors does (``formats/microscaling.py``).
bitsandbytes' "fp4" is a different table (its own exponent bias, no ±6 level).
"""
from __future__ import annotations

import torch

from .levels import register_levels

E2M1_MAX = 6.0


def e2m1_value(code: int) -> float:
    sign = -1.0 if code & 0b1000 else 1.0
    exponent, mantissa = (code >> 1) & 0b11, code & 1
    magnitude = mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2)
    return sign * magnitude


@register_levels("fp")
def e2m1_levels() -> torch.Tensor:
    """The 16 E2M1 values in float64, indexed by their 4-bit code."""
    return torch.tensor([e2m1_value(q) for q in range(16)], dtype=torch.float64)
