"""Coded block scales of FP4 E2M1 blocks: MXFP4 (E8M0 powers of two) and NVFP4 (E4M3 times a
per-tensor float32 scale). The codes themselves are ``formats/fp4.py``'s; only the scales differ.

MXFP4 (OCP Microscaling v1.0; ``scale_dtype: e8m0``, blocks of 32 in the standard format): a
block's scale is ``2^(e − 127)``, stored as the uint8 biased exponent ``e`` (255 is NaN and never
written). The exponent follows compressed-tensors (``mxfp_utils.generate_mx_scales``, after vLLM's
reference): the block's absmax rounded to E2M1's precision (one mantissa bit, half up) has
exponent ``E``, and the scale is ``2^(E − 2)`` (2 is E2M1's largest exponent: 6 = 1.5·2²).
Equivalently, the largest power of two ``s`` with ``absmax / s >= 3.5``; so ``absmax / s``
lies in [3.5, 7) and a block whose largest weight lands in (6, 7)·s has it clipped to 6·s. The
clipping pays: on blocks of 32 drawn from N(0, 1), Student-t(3) and Laplace, the squared error is
6–15% lower than with the smallest power of two that clips nothing. An all-zero block gets
the smallest scale, ``2^−127`` (E8M0 has no zero).

NVFP4 (``scale_dtype: e4m3``, blocks of 16): one float32 global scale per tensor,
``g = 448·6 / absmax(W)`` (1 when that is not a finite float32, as for an all-zero W), and per
block an E4M3 (``float8_e4m3fn``) scale ``s_b = e4m3(g · absmax_b / 6)``, rounded to nearest
through float32 and saturated at 448; a weight is ``level · (s_b / g)``, the quotient formed in
float32. These are compressed-tensors' definitions (``generate_gparam``, ``calculate_qparams``)
and its decoding (``forward._dequantize`` divides the block scale by the global scale, then
multiplies), so both sides decode to the same float32 numbers. Rounding ``s_b`` to nearest
rather than up (lowbit's rule for float scales) clips a block's top weight by at most 1/16 and
measured 10–18% lower squared error on blocks of 16 (N(0, 1), Student-t(3)).

Every function here works on decoded scales as rounders use them: float32 ``(rows, n_blocks)``,
the values the codes are computed against; :func:`encode` / :func:`decode` convert to and from
the stored codes, exactly.
"""
from __future__ import annotations

import torch

from .spec import FormatError, FormatSpec

E8M0_BIAS = 127
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127  # byte 255 is NaN
E2M1_MAX_EXP = 2                        # 6 = 1.5·2²
E4M3_DTYPE = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3_DTYPE).max)  # 448

# float32 values of the 255 finite E8M0 bytes (Python's 2.0 ** k is exact; 2^-127 is a float32
# subnormal, still exact).
_E8M0_VALUES = torch.tensor([2.0 ** (e - E8M0_BIAS) for e in range(255)] + [float("nan")],
                            dtype=torch.float32)


def global_scale(w: torch.Tensor, level_max: float) -> torch.Tensor:
    """NVFP4's per-tensor scale of ``w``: float32 ``(1,)``, ``448 · level_max / absmax(w)``."""
    amax = w.detach().abs().max().double()
    g = (E4M3_MAX * level_max / amax).float()
    return torch.where(torch.isfinite(g) & (amax > 0), g, torch.ones_like(g)).reshape(1)


def block_scale(amax: torch.Tensor, spec: FormatSpec, level_max: float,
                global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded float32 scales of blocks with (possibly shrunk) absmax ``amax`` (float64)."""
    if spec.scale_dtype == "e8m0":
        return _E8M0_VALUES.to(amax.device)[_e8m0_code(amax).long()]
    if spec.scale_dtype == "e4m3":
        if global_scale is None:
            raise ValueError("NVFP4 block scales need the tensor's global scale")
        return _decode_e4m3(_e4m3_code(amax, level_max, global_scale), global_scale)
    raise ValueError(f"{spec.label()} has no coded block scales")


def encode(scale: torch.Tensor, spec: FormatSpec, global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded block scales → their stored codes (uint8 E8M0 exponents or float8_e4m3fn).

    Raises FormatError unless the codes decode to exactly ``scale``: a scale that did not come
    from :func:`block_scale` (a rounder that bypassed the format) has no stored form."""
    if spec.scale_dtype == "e8m0":
        mantissa, exponent = torch.frexp(scale.double())  # scale = mantissa · 2^exponent, [0.5, 1)
        stored = (exponent - 1 + E8M0_BIAS).clamp(0, 254).to(torch.uint8)
    else:
        if global_scale is None:
            raise FormatError(f"{spec.label()}: no global scale to code the block scales with")
        # scale · g is s_b within one float32 rounding of s_b / g, far closer than the next E4M3 value.
        stored = (scale.double() * global_scale.double()).float().to(E4M3_DTYPE)
    if not torch.equal(decode(stored, spec, global_scale), scale.float()):
        raise FormatError(f"{spec.label()}: block scales are not values its {spec.scale_dtype} "
                          f"scales can hold")
    return stored


def decode(stored: torch.Tensor, spec: FormatSpec, global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Stored block-scale codes → float32 scales, as compressed-tensors decodes them."""
    if spec.scale_dtype == "e8m0":
        return _E8M0_VALUES.to(stored.device)[stored.long()]
    return _decode_e4m3(stored, global_scale)


def _e8m0_code(amax: torch.Tensor) -> torch.Tensor:
    mantissa, exponent = torch.frexp(amax)  # amax = (2·mantissa) · 2^(exponent − 1)
    # One mantissa bit, half up: 2·mantissa >= 1.75 rounds to the next binade.
    e = exponent - 1 - E2M1_MAX_EXP + (mantissa >= 0.875).to(exponent.dtype)
    e = torch.where(amax > 0, e, torch.full_like(e, E8M0_MIN_EXP))
    return (e.clamp(E8M0_MIN_EXP, E8M0_MAX_EXP) + E8M0_BIAS).to(torch.uint8)


def _e4m3_code(amax: torch.Tensor, level_max: float, global_scale: torch.Tensor) -> torch.Tensor:
    target = (amax * global_scale.double() / level_max).float()  # compressed-tensors forms it in float32
    return target.clamp(max=E4M3_MAX).to(E4M3_DTYPE)  # the cast rounds to nearest (an overflow is NaN)


def _decode_e4m3(stored: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    return stored.float() / global_scale.float()
