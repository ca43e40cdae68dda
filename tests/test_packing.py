"""Bit-packing: exact round trips over many shapes, an independent bitstream reference, and
word-for-word agreement with compressed-tensors' ``pack_to_int32`` (the layout vLLM reads)."""
from __future__ import annotations

import math
import random

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

from lowbit.formats import pack, packed_width, unpack

BITS = (2, 3, 4, 8)
# Lengths around every boundary that matters: codes per word (16/10.67/8/4), 32 (one 3-bit
# period is 32 codes in 3 words), and lengths that are multiples of none of them.
LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 15, 16, 17, 21, 31, 32, 33, 63, 64, 65, 95, 96, 97, 100, 576)


def random_codes(shape, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int64).to(torch.uint8)


def reference_pack_row(codes: list[int], bits: int) -> list[int]:
    """Element i at bit i·bits of one little-endian bitstream (a Python integer), cut into
    32-bit words, each read as a signed int32."""
    stream = 0
    for i, c in enumerate(codes):
        stream |= c << (i * bits)
    words = []
    for k in range(math.ceil(len(codes) * bits / 32)):
        u = (stream >> (32 * k)) & 0xFFFFFFFF
        words.append(u - 2**32 if u >= 2**31 else u)
    return words


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_is_exact_over_many_shapes(bits):
    rng = random.Random(bits)
    shapes = [(n,) for n in LENGTHS] + [(rng.randint(1, 9), n) for n in LENGTHS]
    shapes += [(rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 200)) for _ in range(20)]
    for i, shape in enumerate(shapes):
        codes = random_codes(shape, bits, seed=1000 * bits + i)
        words = pack(codes, bits)
        assert words.dtype == torch.int32
        assert words.shape == (*shape[:-1], math.ceil(shape[-1] * bits / 32)), shape
        assert words.shape[-1] == packed_width(shape[-1], bits)
        back = unpack(words, bits, shape[-1])
        assert back.dtype == torch.uint8 and torch.equal(back, codes), shape


@pytest.mark.parametrize("bits", BITS)
def test_extreme_codes_round_trip(bits):
    """All-ones codes set the sign bit of every word; all-zeros and alternating patterns too."""
    for n in (31, 32, 33, 96):
        for fill in (0, 2**bits - 1):
            codes = torch.full((2, n), fill, dtype=torch.uint8)
            assert torch.equal(unpack(pack(codes, bits), bits, n), codes)
        alternating = (torch.arange(n) % 2 * (2**bits - 1)).to(torch.uint8)
        assert torch.equal(unpack(pack(alternating, bits), bits, n), alternating)


@pytest.mark.parametrize("bits", BITS)
def test_matches_an_independent_bitstream_reference(bits):
    for i, n in enumerate(LENGTHS):
        codes = random_codes((3, n), bits, seed=50 * bits + i)
        words = pack(codes, bits)
        for row in range(3):
            assert words[row].tolist() == reference_pack_row(codes[row].tolist(), bits), (n, row)


def test_three_bit_codes_cross_word_boundaries():
    """Code 10 occupies bits 30..32: its low two bits end word 0, its high bit starts word 1."""
    codes = torch.zeros(11, dtype=torch.uint8)
    codes[10] = 0b101
    words = pack(codes, 3)
    assert words.tolist() == [0b01 << 30, 0b1]
    assert unpack(words, 3, 11).tolist() == codes.tolist()


@pytest.mark.parametrize("bits", BITS)
def test_identical_words_to_compressed_tensors(bits):
    """compressed-tensors packs signed int8 ``q - 2^(bits-1)`` (it adds the offset back)."""
    rng = random.Random(7 * bits)
    for i, n in enumerate(LENGTHS):
        rows = rng.randint(1, 6)
        codes = random_codes((rows, n), bits, seed=bits * 7919 + i)
        signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
        theirs = pack_to_int32(signed, bits, packed_dim=1)
        assert torch.equal(pack(codes, bits), theirs), (bits, n)
        # and their unpacker reads our words back to the same (signed) codes
        back = unpack_from_int32(pack(codes, bits), bits, torch.Size((rows, n)), packed_dim=1)
        assert torch.equal(back, signed), (bits, n)


@pytest.mark.parametrize("bits", [3, 4])
def test_packing_along_dim_zero_matches_compressed_tensors_zero_points(bits):
    """Zero points are packed along the output dimension: pack the transpose."""
    codes = random_codes((37, 5), bits, seed=11)
    signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    theirs = pack_to_int32(signed, bits, packed_dim=0)
    ours = pack(codes.t().contiguous(), bits).t()
    assert torch.equal(ours, theirs)


def test_packed_width():
    assert packed_width(576, 4) == 72 and packed_width(576, 3) == 54
    assert packed_width(10, 3) == 1 and packed_width(11, 3) == 2
    assert packed_width(33, 8) == 9 and packed_width(1, 2) == 1 and packed_width(0, 4) == 0
