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


def _pack_lsb(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes ``(..., n)`` integers in [0, 2^bits) → int32 ``(..., ceil(n·bits/32))``.

    32 codes fill exactly ``bits`` words whatever the width, and code ``i`` of such a period
    sits at bit ``i·bits``; for 3 bits its top bits spill into the next word when it crosses a
    word boundary. One strided pass per code position works in int32 at the codes' own size
    (expanding every code into its bits would cost ~100 bytes per code).
    """
    n = codes.shape[-1]
    lead = codes.shape[:-1]
    c = codes.to(torch.int32)
    pad = (-n) % 32
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*lead, -1, 32)
    words = torch.zeros(*lead, c.shape[-2], bits, dtype=torch.int32, device=c.device)
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        # int32 shifts into the sign bit wrap to the two's complement pattern we want.
        words[..., word] |= c[..., i] << offset
        if offset + bits > 32:
            words[..., word + 1] |= c[..., i] >> (32 - offset)
    return words.reshape(*lead, -1)[..., : packed_width(n, bits)]


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
    return _unpack_stream(words, bits, n)


def _unpack_stream(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Widths that do not divide 32 (3 bits): :func:`_pack_lsb` undone one code position at a time."""
    lead = words.shape[:-1]
    mask = (1 << bits) - 1
    w = words.to(torch.int32)
    pad = (-w.shape[-1]) % bits
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    w = w.reshape(*lead, -1, bits)
    codes = torch.empty(*lead, w.shape[-2], 32, dtype=torch.uint8, device=w.device)
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        v = w[..., word] >> offset
        if offset + bits > 32:
            # The arithmetic shift filled the top with sign bits: keep only the low part.
            v = (v & ((1 << (32 - offset)) - 1)) | (w[..., word + 1] << (32 - offset))
        codes[..., i] = v & mask
    return codes.reshape(*lead, -1)[..., :n]


PACKINGS["int32-lsb"] = (_pack_lsb, _unpack_lsb)
DEFAULT_PACKING = "int32-lsb"


def pack(codes: torch.Tensor, bits: int, packing: str = DEFAULT_PACKING) -> torch.Tensor:
    return PACKINGS[packing][0](codes, bits)


def unpack(words: torch.Tensor, bits: int, n: int, packing: str = DEFAULT_PACKING) -> torch.Tensor:
    return PACKINGS[packing][1](words, bits, n)
