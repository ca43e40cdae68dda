"""Double quantization (QLoRA): the block scales of a weight matrix, quantized again.

A lookup-table format at block 64 stores one float32 absmax per 64 weights, 0.5 bits per weight.
Quantizing those scales to 8 bits, in blocks of ``DQ_BLOCK`` = 256 scales that share one float32
second-level scale, costs ``8/64 + 32/(64·256)`` = 0.127 bits per weight instead.

The scheme is bitsandbytes' (``quantize_4bit(compress_statistics=True)``), so that an NF4 + DQ
matrix is the same numbers in both: the scales' mean is subtracted (one float32 ``offset`` per
matrix), each block of 256 centred values is divided by its absmax (float32 ``dq_scale``) and
rounded to the nearest entry of the signed 8-bit *dynamic* map (``DYNAMIC_MAP``, Dettmers 2016):
for k = 0..6, the midpoints of 2^k + 1 points evenly spaced on [0.1, 1], times 10^(k-6), with
both signs, plus 0 and 1 — a floating-point-like grid, fine near 0 (scales close to the mean)
and coarse near ±1 (the block's extremes). ``scale ≈ MAP[code] · dq_scale[block] + offset``.
A linear int8 grid (lowbit's first version) had the same RMS error on SmolLM2's scales (0.45 vs
0.50%) but different codes, and an NF4 + DQ model whose perplexity differed from bitsandbytes'
by the chance of which weights moved (37.38 against 37.12 on lee-512); with the same map the two
models are the same.

Shapes: ``scale (rows, n)``, flattened row-major into blocks of 256 (the last one may be short);
``codes`` int8 of the same shape (the map index minus 128), ``dq_scale`` float32
``(ceil(rows·n / 256),)``, ``offset`` float32 ``(1,)``. Decoding is :func:`decode_scales`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DQ_BITS = 8
DQ_BLOCK = 256
# Smallest normal float16: a decoded scale never reaches 0 (a block of zeros must still divide).
_TINY = torch.finfo(torch.float16).tiny


def _dynamic_map() -> torch.Tensor:
    # float32 arithmetic throughout, in this order, so the entries equal bitsandbytes'
    # create_dynamic_map(signed=True) bit for bit (tests/test_double_quant.py checks it).
    values = [0.0, 1.0]
    for k in range(7):
        points = torch.linspace(0.1, 1, 2 ** k + 1)
        mids = (points[:-1] + points[1:]) / 2 * 10.0 ** (k - 6)
        values += mids.tolist() + (-mids).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


DYNAMIC_MAP = _dynamic_map()  # 256 sorted entries in [-0.993, 1]: 127 negative, 0 at index 127, 128 positive
_INDEX_BIAS = 128  # stored code = map index - 128, so the codes fit an int8 buffer


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
    """Quantize positive block scales ``(rows, n)`` to 8-bit dynamic-map codes around their mean.

    float32 arithmetic, as bitsandbytes does it: ``offset`` the mean, ``dq_scale`` each block's
    absmax of the centred values, codes the nearest map entry of ``centred / dq_scale``.
    """
    a = scale.float()
    offset = a.mean().reshape(1)
    centred = _padded_blocks(a - offset)
    dq_scale = centred.abs().amax(-1).clamp_min(_TINY)
    table = DYNAMIC_MAP.to(scale.device)
    normalized = (centred / dq_scale.unsqueeze(-1)).reshape(-1)
    # Nearest entry by the midpoints of the sorted map (no (n, 256) distance matrix).
    index = torch.bucketize(normalized, (table[1:] + table[:-1]) / 2)
    codes = (index - _INDEX_BIAS)[: a.numel()].reshape(scale.shape).to(torch.int8)
    return DoubleQuantized(codes, dq_scale, offset)


def decode_scales(codes: torch.Tensor, dq_scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """float32 block scales ``MAP[code] · dq_scale + offset`` (two float32 roundings), at least
    the smallest normal float16."""
    table = DYNAMIC_MAP.to(codes.device)
    values = table[codes.long().reshape(-1) + _INDEX_BIAS]
    blocks = _padded_blocks(values) * dq_scale.to(torch.float32).unsqueeze(-1)
    scale = blocks.reshape(-1)[: codes.numel()].reshape(codes.shape) + offset.to(torch.float32)
    return scale.clamp_min(_TINY)
