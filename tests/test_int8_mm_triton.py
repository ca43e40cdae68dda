"""The fused W8A8 int8 GEMM (kernels/triton_int8_mm.py) against the exact integer reference.

Runs on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``), in a fresh process when
Triton was imported compiled-mode before this module (see test_kernels_triton.py for why). The
int32 accumulator is exact on both sides and the epilogue is the same float32 arithmetic in the
same order (``acc · s_x · s_w + bias``), so float32 outputs are compared for equality; bfloat16
outputs within one bfloat16 step of them.
"""
from __future__ import annotations

from triton_interpret import TRITON_PREIMPORTED, run_in_fresh_process  # first: it sets the mode

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")


def reference(q, w, xs, ws, bias, dtype):
    """int64 product (exact), then the reference epilogue (kernels/reference_w8a8.scale_output)."""
    acc = (q.long() @ w.long().t())
    assert acc.abs().max() < 2**31
    y = acc.to(torch.int32).float() * xs.float().reshape(-1, 1) * ws.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


@interpreted
@pytest.mark.parametrize("M,N,K,with_bias,dtype", [
    (37, 45, 70, True, torch.float32),     # every dimension crosses a tile edge
    (64, 64, 96, False, torch.float32),
    (5, 96, 64, True, torch.bfloat16),
])
def test_fused_int8_gemm_equals_the_integer_reference(M, N, K, with_bias, dtype):
    from lowbit.kernels.triton_int8_mm import int8_mm_scaled

    g = torch.Generator().manual_seed(M * 1000 + N)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = torch.rand(M, 1, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, 1, generator=g) * 0.01 + 1e-3
    bias = torch.randn(N, generator=g) if with_bias else None
    y = int8_mm_scaled(q, w, xs, ws, bias, dtype)
    assert y.dtype == dtype and y.shape == (M, N)
    if dtype == torch.float32:
        assert torch.equal(y, reference(q, w, xs, ws, bias, dtype))
    else:
        # The interpreter emulates the float32 -> bfloat16 cast by truncation (the GPU rounds to
        # nearest even): either way within one bfloat16 step (2^-7 relative) of the exact float32.
        exact = reference(q, w, xs, ws, bias, torch.float32)
        assert ((y.float() - exact).abs() <= exact.abs() * 2**-7).all()


@interpreted
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_tail_launch_equals_the_integer_reference(with_bias):
    """Full-width tiles for the columns of the full waves, half-width tiles for the rest, in one
    launch: every output element is written once and equals the reference. A 3-SM "device" makes
    the 2×5 tiles of 32×32 (3 full waves and one tile) split into 4 full-width columns of tiles
    and a half-width tail."""
    from lowbit.kernels.triton_int8_mm import Tiles, int8_mm_tma, main_columns

    M, N, K = 37, 160, 80
    tiles = Tiles(32, 32, 32, 1, 4, split_tail=True)
    assert main_columns(M, N, tiles, sms=3) == 128
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = torch.rand(M, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    bias = torch.randn(N, generator=g) if with_bias else None
    out = torch.full((M, N), float("nan"))  # poisoned: an unwritten element fails the comparison
    y = int8_mm_tma(q, w, xs, ws, bias, out, tiles, sms=3)
    assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


@interpreted
@pytest.mark.parametrize("programs", [1, 3, 64])
def test_persistent_launch_equals_the_integer_reference(programs):
    """One program per SM looping over the tiles: with 1, 3 or more programs than the 2×5 tiles
    of 32×32, every output element is written once and equals the reference."""
    from lowbit.kernels.triton_int8_mm import Tiles, int8_mm_tma

    M, N, K = 37, 160, 80
    g = torch.Generator().manual_seed(11)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = torch.rand(M, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    bias = torch.randn(N, generator=g)
    out = torch.full((M, N), float("nan"))
    y = int8_mm_tma(q, w, xs, ws, bias, out, Tiles(32, 32, 32, 1, 4, group_m=2, persistent=True), sms=programs)
    assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


def test_split_tail_keeps_whole_waves_of_full_width_tiles():
    """M = 1024 on N = 14336 with 128×256 tiles is 448 tiles, 3.4 waves of 132 SMs: the 49 whole
    columns of tiles in the 3 full waves stay full width, the last 7 (1792 columns) go half
    width. Without the flag, or when the tiles fill whole waves, nothing is split."""
    from lowbit.kernels.triton_int8_mm import Tiles, main_columns

    split = Tiles(128, 256, 128, 4, 8, split_tail=True)
    assert main_columns(1024, 14336, split, sms=132) == 49 * 256
    assert main_columns(1024, 14336, Tiles(128, 256, 128, 4, 8), sms=132) == 14336
    assert main_columns(1056, 256 * 12, split, sms=132) == 256 * 12  # 108 tiles: under one wave, no gain
    assert main_columns(128 * 11, 256 * 12, split, sms=132) == 256 * 12  # 132 tiles: one whole wave


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_fused_int8_gemm_in_fresh_process():
    run_in_fresh_process(__file__)


@interpreted
@pytest.mark.parametrize("split", [2, 3])
def test_split_k_launch_equals_the_integer_reference(split):
    """K split across programs, int32 partials summed by the last program to arrive at each tile:
    the same exact accumulator, so the float32 output equals the reference. Two calls in a row
    check the arrival counters are left at zero."""
    from lowbit.kernels.triton_int8_mm import Tiles, int8_mm_tma

    M, N, K = 37, 45, 7 * 32  # 7 K tiles: with 3 splits the last gets one tile
    tiles = Tiles(32, 32, 32, 1, 4)
    g = torch.Generator().manual_seed(split)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = torch.rand(M, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    bias = torch.randn(N, generator=g)
    for _ in range(2):
        out = torch.full((M, N), float("nan"))
        y = int8_mm_tma(q, w, xs, ws, bias, out, tiles, split_k=split)
        assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


def test_split_k_choice():
    from lowbit.kernels.triton_int8_mm import MAX_SPLIT_K, Tiles, split_k_for

    t = Tiles(128, 256, 128, 4, 8, split_tail=True)
    assert split_k_for(256, 4096, 14336, t, 132) == 4      # 32 tiles: four splits fill a wave
    assert split_k_for(128, 4096, 14336, t, 132) == MAX_SPLIT_K
    assert split_k_for(512, 4096, 14336, t, 132) == 2
    assert split_k_for(1024, 4096, 14336, t, 132) == 1     # 128 tiles: a wave already
    assert split_k_for(256, 14336, 4096, t, 132) == 1      # 112 tiles
    assert split_k_for(128, 576, 1536, t, 132) == 1        # 12 K tiles: too few to split


def test_tile_choice_by_tile_count():
    """Wide tiles where they fill half the SMs; narrow ones (K split when still few) below."""
    from lowbit.kernels import triton_int8_mm as mm

    assert mm.choose_tiles(256, 14336, 132) is mm.WIDE_TILES    # 112 wide tiles
    assert mm.choose_tiles(1024, 4096, 132) is mm.WIDE_TILES    # 128
    assert mm.choose_tiles(128, 14336, 132) is mm.NARROW_TILES  # 56 wide: 112 narrow
    assert mm.choose_tiles(256, 4096, 132) is mm.NARROW_TILES   # 32 wide: 64 narrow, K split in 2
    assert mm.split_k_for(256, 4096, 14336, mm.NARROW_TILES, 132) == 2
    assert mm.split_k_for(512, 4096, 14336, mm.NARROW_TILES, 132) == 1


@interpreted
def test_custom_operator_runs_the_fused_path_and_traces_as_one_call():
    """``lowbit::w8a8_int8_mm``: the input pass and the fused GEMM as one operator, equal to the
    integer reference; a shape-only fake, so ``torch.compile`` traces it whole (fullgraph)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import lowbit.kernels  # noqa: F401  (registers the operators)
    from lowbit.kernels.activations import int8_per_token

    g = torch.Generator().manual_seed(11)
    M, N, K = 37, 45, 96
    x = torch.randn(M, K, generator=g)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    bias = torch.randn(N, generator=g)
    q, xs = int8_per_token(x)
    want = reference(q, w, xs, ws, bias, torch.float32)
    assert torch.equal(torch.ops.lowbit.w8a8_int8_mm(x, w, ws, None, bias), want)
    with FakeTensorMode() as mode:
        fake = torch.ops.lowbit.w8a8_int8_mm(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(ws),
                                             None, None)
    assert fake.shape == (M, N) and fake.dtype == x.dtype
    compiled = torch.compile(lambda a: torch.ops.lowbit.w8a8_int8_mm(a, w, ws, None, bias) * 2,
                             backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), want * 2)
