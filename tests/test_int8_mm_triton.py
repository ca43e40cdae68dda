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


def operands(M, N, K, seed, with_bias=True):
    """Random int8 codes of inputs and weights, their float32 scales, a bias (or None)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = torch.rand(M, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    return q, w, xs, ws, (torch.randn(N, generator=g) if with_bias else None)


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
def test_weight_scales_are_read_in_their_stored_dtype():
    """bfloat16 weight scales (a bf16 model's) are widened in the epilogue, exactly: the result
    equals the reference on the same scales in float32, with no conversion before the call."""
    from lowbit.kernels.triton_int8_mm import int8_mm_scaled

    q, w, xs, ws, bias = operands(37, 45, 96, 5)
    ws16 = ws.bfloat16()
    y = int8_mm_scaled(q, w, xs, ws16, bias, torch.float32)
    assert torch.equal(y, reference(q, w, xs, ws16.float(), bias, torch.float32))


@interpreted
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_tail_launch_equals_the_integer_reference(with_bias):
    """Full-width tiles for the columns of the full waves, half-width tiles for the rest, in one
    launch: every output element is written once and equals the reference. A 4-SM "device" makes
    the 2×5 tiles of 32×32 (2 full waves and two tiles) split into 4 full-width columns of tiles
    and a half-width tail (4 tiles: one wave)."""
    from lowbit.kernels.triton_int8_mm import Tiles, int8_mm_tma, main_columns

    M, N, K = 37, 160, 80
    tiles = Tiles(32, 32, 32, 1, 4, split_tail=True)
    assert main_columns(M, N, tiles, sms=4) == 128
    q, w, xs, ws, bias = operands(M, N, K, 7, with_bias)
    out = torch.full((M, N), float("nan"))  # poisoned: an unwritten element fails the comparison
    y = int8_mm_tma(q, w, xs, ws, bias, out, tiles, sms=4)
    assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


@interpreted
@pytest.mark.parametrize("programs", [1, 3, 64])
def test_persistent_launch_equals_the_integer_reference(programs):
    """One program per SM looping over the tiles: with 1, 3 or more programs than the 2×5 tiles
    of 32×32, every output element is written once and equals the reference."""
    from lowbit.kernels.triton_int8_mm import Tiles, int8_mm_tma

    M, N, K = 37, 160, 80
    q, w, xs, ws, bias = operands(M, N, K, 11)
    out = torch.full((M, N), float("nan"))
    y = int8_mm_tma(q, w, xs, ws, bias, out, Tiles(32, 32, 32, 1, 4, group_m=2, persistent=True), sms=programs)
    assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


def test_split_tail_keeps_whole_waves_of_full_width_tiles():
    """M = 1024 on N = 14336 with 128×256 tiles is 448 tiles, 3.4 waves of 132 SMs: the 49 whole
    columns of tiles in the 3 full waves stay full width, the last 7 (1792 columns) go half
    width. Without the flag, when the tiles fill whole waves, or when the half-width tail would
    not fit in one wave, nothing is split."""
    from lowbit.kernels.triton_int8_mm import Tiles, main_columns

    split = Tiles(128, 256, 128, 4, 8, split_tail=True)
    assert main_columns(1024, 14336, split, sms=132) == 49 * 256
    assert main_columns(1024, 14336, Tiles(128, 256, 128, 4, 8), sms=132) == 14336
    assert main_columns(1056, 256 * 12, split, sms=132) == 256 * 12  # 108 tiles: under one wave, no gain
    assert main_columns(128 * 11, 256 * 12, split, sms=132) == 256 * 12  # 132 tiles: one whole wave
    # 14336×4096 at M = 4096: 512 tiles, the 4 columns past 3 waves would be 256 half-width tiles
    assert main_columns(4096, 4096, split, sms=132) == 4096
    # 8192×28672 at M = 4096: 3584 tiles, one column past 27 waves: 64 half-width tiles
    assert main_columns(4096, 28672, split, sms=132) == 111 * 256


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
    q, w, xs, ws, bias = operands(M, N, K, split)
    for _ in range(2):
        out = torch.full((M, N), float("nan"))
        y = int8_mm_tma(q, w, xs, ws, bias, out, tiles, split_k=split)
        assert torch.equal(y, reference(q, w, xs, ws, bias, torch.float32))


def test_tile_choice_by_tile_count():
    """Wide tiles where they fill half the SMs; narrow ones (K split when still few) below."""
    from lowbit.kernels import triton_int8_mm as mm

    assert mm.choose_tiles(3, 14336, 132) is mm.SMALL_TILES     # above the decode GEMV
    assert mm.choose_tiles(96, 4096, 132) is mm.SMALL_TILES
    assert mm.choose_tiles(97, 14336, 132) is mm.NARROW_TILES
    assert mm.choose_tiles(256, 14336, 132) is mm.WIDE_TILES    # 112 wide tiles
    # FP8 on these kernels where they take small or wide tiles, on cuBLAS where narrow ones
    assert mm.fp8_prefers_tma(8, 4096, 132) and mm.fp8_prefers_tma(256, 14336, 132)
    assert mm.fp8_prefers_tma(1024, 4096, 132)
    assert not mm.fp8_prefers_tma(128, 14336, 132) and not mm.fp8_prefers_tma(512, 4096, 132)
    assert mm.choose_tiles(1024, 4096, 132) is mm.WIDE_TILES    # 128
    assert mm.choose_tiles(128, 14336, 132) is mm.NARROW_TILES  # 56 wide: 112 narrow
    assert mm.choose_tiles(256, 4096, 132) is mm.NARROW_TILES   # 32 wide: 64 narrow, K split in 2
    assert mm.split_k_for(256, 4096, 14336, mm.NARROW_TILES, 132) == 2
    assert mm.split_k_for(512, 4096, 14336, mm.NARROW_TILES, 132) == 1


@interpreted
def test_custom_operator_runs_the_fused_path_and_traces_as_one_call():
    """``lowbit::w8a8_mm``: the input pass and the fused GEMM as one operator, equal to the
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
    assert torch.equal(torch.ops.lowbit.w8a8_mm(x, w, ws, None, bias), want)
    with FakeTensorMode() as mode:
        fake = torch.ops.lowbit.w8a8_mm(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(ws),
                                             None, None)
    assert fake.shape == (M, N) and fake.dtype == x.dtype
    compiled = torch.compile(lambda a: torch.ops.lowbit.w8a8_mm(a, w, ws, None, bias) * 2,
                             backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), want * 2)


@interpreted
def test_layer_dispatch_traces_without_graph_breaks():
    """The W8A8 layer's CUDA kernel under torch.compile: from 128 rows (and above the decode
    GEMV on Hopper) its product is one ``lowbit::w8a8_mm`` call, and nothing around it breaks
    the graph (a float32 copy of the scales cached on the module once did, with a data-pointer
    check per layer). The kernel function is traced directly on CPU tensors, which the operator
    runs through the interpreter."""
    from lowbit.kernels.cuda_w8a8 import w8a8_int8_cuda
    from lowbit.modules.w8a8_linear import W8A8Linear

    q, w, xs, ws, bias = operands(128, 48, 64, 3)
    layer = W8A8Linear(64, 48, bias=True).requires_grad_(False)
    layer.weight_codes.copy_(w)
    layer.weight_scale.copy_(ws.reshape(-1, 1))
    layer.bias.copy_(bias)
    x = torch.randn(128, 64)
    explained = torch._dynamo.explain(w8a8_int8_cuda)(x, layer)
    assert explained.graph_break_count == 0, explained.break_reasons
    ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("w8a8_mm" in o for o in ops), ops



def fp8_operands(M, N, K, seed):
    """E4M3 codes of inputs and weights (random values over most of E4M3's range), their scales,
    a bias."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(M, K, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    w = (torch.randn(N, K, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    xs = torch.rand(M, generator=g) * 0.02 + 1e-3
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    return q, w, xs, ws, torch.randn(N, generator=g)


def fp8_reference(q, w, xs, ws, bias):
    """float64 product of the E4M3 values (exact), then the epilogue's scales and bias."""
    return (q.double() @ w.double().t()) * xs.double()[:, None] * ws.double()[None, :] + bias.double()


@interpreted
@pytest.mark.parametrize("split", [None, 3])
def test_fp8_gemm_equals_the_float64_product(split):
    """The TMA GEMM on E4M3 codes: products exact in float32, sums rounded in float32 (in split
    order when K is split), so within a few float32 steps of the float64 product (relative to the
    sum of the products' magnitudes, which bounds the rounding)."""
    from lowbit.kernels.triton_int8_mm import Tiles, fp8_mm_scaled, int8_mm_tma

    M, N, K = 37, 45, 7 * 32
    q, w, xs, ws, bias = fp8_operands(M, N, K, 13)
    if split is None:
        y = fp8_mm_scaled(q, w, xs, ws, bias, torch.float32)
    else:
        y = int8_mm_tma(q, w, xs.float(), ws.float(), bias, torch.empty(M, N), Tiles(32, 32, 32, 1, 4), split_k=split)
    bound = (q.double().abs() @ w.double().abs().t()) * xs.double()[:, None] * ws.double()[None, :]
    err = (y.double() - fp8_reference(q, w, xs, ws, bias)).abs()
    assert (err <= bound * K * 2**-24 + 1e-6).all()


@interpreted
def test_w8a8_operator_takes_fp8_codes():
    """``lowbit::w8a8_mm`` with E4M3 codes: the FP8 input pass (the reference's codes and scales),
    then the E4M3 GEMM; equal to the float64 product of the reference's codes within float32
    rounding. The inputs are E4M3 values with a row maximum of 448 (scale 1, exact codes): the
    interpreter's emulation of the float32 → E4M3 conversion rounds some inexact values wrongly
    (-125.8 to -64), where the GPU converts in hardware (bench/w8a8_kernels.py checks its codes
    against the reference's on the GPU)."""
    import lowbit.kernels  # noqa: F401  (registers the operators)
    from lowbit.kernels.activations import fp8_per_token

    g = torch.Generator().manual_seed(17)
    x = (torch.randn(5, 96, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    x[:, 0] = 448.0
    _, w, _, ws, bias = fp8_operands(5, 48, 96, 19)
    q, xs = fp8_per_token(x)
    xs = xs.reshape(-1)
    y = torch.ops.lowbit.w8a8_mm(x, w, ws, None, bias)
    bound = (q.double().abs() @ w.double().abs().t()) * xs.double()[:, None] * ws.double()[None, :]
    assert y.shape == (5, 48)
    assert ((y.double() - fp8_reference(q, w, xs, ws, bias)).abs() <= bound * 96 * 2**-24 + 1e-6).all()


@interpreted
def test_fp8_codes_the_copy_engine_cannot_address_take_scaled_mm(monkeypatch):
    """E4M3 weight codes whose rows are not 16-byte aligned (a view at an odd offset) go to the
    ``torch._scaled_mm`` path instead of failing in the TMA GEMM."""
    from lowbit.kernels import cuda_w8a8

    calls = []
    monkeypatch.setattr(cuda_w8a8, "fp8_scaled_mm", lambda *a: calls.append(a) or "scaled_mm")
    _, w, _, ws, bias = fp8_operands(5, 48, 97, 23)
    x = torch.randn(5, 96)
    assert cuda_w8a8.fused_linear(x, w[:, 1:], ws, None, bias) == "scaled_mm" and len(calls) == 1
