"""Bit-packing of unsigned codes into int32 words, as a registry keyed by name.

``int32-lsb``: a dense bitstream along the last dimension, element ``i`` at bit ``i·bits``
(least significant bit first, crossing word boundaries for 3-bit). For unsigned codes this is
the layout compressed-tensors' ``pack_to_int32`` writes (it adds ``2^(bits-1)`` to its signed
codes first); for 2/4/8 bits it is also "element ``i`` in word ``i // (32/bits)``".
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Packer = tuple[Callable[[torch.Tensor, int], torch.Tensor], Callable[[torch.Tensor, int, int], torch.Tensor]]
PACKINGS: dict[str, Packer] = {}


def packed_width(n: int, bits: int) -> int:
    return math.ceil(n * bits / 32)


def _to_int32(words64: torch.Tensor) -> torch.Tensor:
    # Reinterpret unsigned 32-bit values held in int64 as signed int32 (two's complement).
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def _pack_lsb(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes ``(..., n)`` integers in [0, 2^bits) → int32 ``(..., ceil(n·bits/32))``."""
    n = codes.shape[-1]
    lead = codes.shape[:-1]
    c = codes.to(torch.int64)
    if 32 % bits == 0:
        per = 32 // bits
        pad = (-n) % per
        c = torch.nn.functional.pad(c, (0, pad)).reshape(*lead, -1, per)
        shifts = torch.arange(per, device=c.device, dtype=torch.int64) * bits
        return _to_int32((c << shifts).sum(-1))
    # General bitstream: 32 codes fill exactly `bits` words.
    pad = (-n) % 32
    c = torch.nn.functional.pad(c, (0, pad)).reshape(*lead, -1, 32)
    bit_idx = torch.arange(bits, device=c.device, dtype=torch.int64)
    stream = ((c.unsqueeze(-1) >> bit_idx) & 1).reshape(*lead, -1, bits, 32)
    weights = torch.ones(32, device=c.device, dtype=torch.int64) << torch.arange(32, device=c.device)
    words = (stream * weights).sum(-1).reshape(*lead, -1)
    return _to_int32(words[..., : packed_width(n, bits)])


def _unpack_lsb(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """int32 ``(..., w)`` → uint8 codes ``(..., n)``; exact inverse of :func:`_pack_lsb`."""
    lead = words.shape[:-1]
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        # int32 arithmetic shifts drag the sign bit along; the mask drops it again.
        per = 32 // bits
        shifts = torch.arange(per, device=words.device, dtype=torch.int32) * bits
        c = (words.to(torch.int32).unsqueeze(-1) >> shifts) & mask
        return c.reshape(*lead, -1)[..., :n].to(torch.uint8)
    w = words.to(torch.int64) & 0xFFFFFFFF
    pad = (-w.shape[-1]) % bits
    w = torch.nn.functional.pad(w, (0, pad)).reshape(*lead, -1, bits)
    stream = (w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1  # (..., G, bits, 32)
    stream = stream.reshape(*lead, -1, 32, bits)
    c = (stream << torch.arange(bits, device=w.device)).sum(-1)
    return c.reshape(*lead, -1)[..., :n].to(torch.uint8)


PACKINGS["int32-lsb"] = (_pack_lsb, _unpack_lsb)
DEFAULT_PACKING = "int32-lsb"


def pack(codes: torch.Tensor, bits: int, packing: str = DEFAULT_PACKING) -> torch.Tensor:
    return PACKINGS[packing][0](codes, bits)


def unpack(words: torch.Tensor, bits: int, n: int, packing: str = DEFAULT_PACKING) -> torch.Tensor:
    return PACKINGS[packing][1](words, bits, n)
