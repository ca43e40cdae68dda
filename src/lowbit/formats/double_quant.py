"""Double quantization (QLoRA): the block scales of a weight matrix, quantized again.

A lookup-table format at block 64 stores one float32 absmax per 64 weights, 0.5 bits per weight.
Quantizing those scales to 8 bits, in blocks of ``DQ_BLOCK`` = 256 scales that share one float32
second-level scale, costs ``8/64 + 32/(64·256)`` = 0.127 bits per weight instead.

Scales are all positive, so their mean is subtracted first (one float32 ``offset`` per matrix,
as bitsandbytes does) and the centred values are rounded symmetrically to int8 codes in
[-127, 127]: ``scale ≈ code · dq_scale[block] + offset``. bitsandbytes rounds them to its 8-bit
"dynamic" (tree) map instead; the linear grid is simpler to state and bound: every decoded scale
is within half a step, ``dq_scale / 2``, of the exact one (plus float32 rounding).

Shapes: ``scale (rows, n)``, flattened row-major into blocks of 256 (the last one may be short);
``codes`` int8 of the same shape, ``dq_scale`` float32 ``(ceil(rows·n / 256),)``, ``offset``
float32 ``(1,)``. Decoding is :func:`decode_scales`, one function used both by the rounders
(codes of the weights are computed against the decoded scales) and at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DQ_BITS = 8
DQ_BLOCK = 256
DQ_QMAX = (1 << (DQ_BITS - 1)) - 1  # 127: symmetric int8 codes
# Smallest normal float16: a decoded scale never reaches 0 (a block of zeros must still divide).
_TINY = torch.finfo(torch.float16).tiny


@dataclass
class DoubleQuantized:
    """The stored form of a matrix's block scales: int8 ``codes``, float32 ``dq_scale`` and ``offset``."""

    codes: torch.Tensor
    dq_scale: torch.Tensor
    offset: torch.Tensor

    def decode(self) -> torch.Tensor:
        return decode_scales(self.codes, self.dq_scale, self.offset)


def n_dq_blocks(n_scales: int) -> int:
    return math.ceil(n_scales / DQ_BLOCK)


def _padded_blocks(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``x`` and view it as ``(n_dq_blocks, DQ_BLOCK)``, zero-padding the last block."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % DQ_BLOCK
    return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, DQ_BLOCK)


def double_quantize(scale: torch.Tensor) -> DoubleQuantized:
    """Quantize positive block scales ``(rows, n)`` to int8 codes around their mean.

    Arithmetic in float64 on the (small) scale tensor. The offset is rounded to float32 first and
    the second-level scale is rounded *up* to float32, so ``|centred| / dq_scale <= 127`` holds for
    the stored values and no code clips.
    """
    from .integer import store_scale  # integer.py imports spec.py, which imports this module

    a = scale.double()
    offset = a.mean().float().reshape(1)
    centred = _padded_blocks(a - offset.double())
    dq_scale = store_scale((centred.abs().amax(-1) / DQ_QMAX).clamp_min(_TINY), torch.float32)
    codes = torch.round(centred / dq_scale.double().unsqueeze(-1)).clamp_(-DQ_QMAX, DQ_QMAX)
    codes = codes.reshape(-1)[: a.numel()].reshape(scale.shape).to(torch.int8)
    return DoubleQuantized(codes, dq_scale, offset)


def decode_scales(codes: torch.Tensor, dq_scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """float32 block scales ``code · dq_scale + offset``, in float32 (two roundings), at least
    the smallest normal float16."""
    blocks = _padded_blocks(codes.to(torch.float32)) * dq_scale.to(torch.float32).unsqueeze(-1)
    scale = blocks.reshape(-1)[: codes.numel()].reshape(codes.shape) + offset.to(torch.float32)
    return scale.clamp_min(_TINY)
