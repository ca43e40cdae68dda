"""Triton weight-only kernels against a float64 dequantize-then-matmul reference.

Runs on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``, set here before Triton is
imported); on a GPU machine the same kernels compile for real. Shapes are small because the
interpreter executes every program in Python. Inputs are random (never zeros) and fresh per test.
"""
from __future__ import annotations

import os
import subprocess
import sys

# Triton decides at decoration time whether a @jit function (its own standard library included)
# is interpreted. If something imported Triton before this module (some torch builds do, at
# `import torch`), its library is compiled-mode and the interpreter cannot call it: then these
# tests run in a fresh process instead (test_kernels_in_fresh_process).
TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lowbit.algorithms.quantized_weight import QuantizedWeight  # noqa: E402
from lowbit.formats import FormatSpec, unpack  # noqa: E402
from lowbit.kernels import select_kernel  # noqa: E402
from lowbit.kernels.triton_layout import WeightLayout, triton_supports  # noqa: E402
from lowbit.kernels.triton_mma_pairs import dequant_tile  # noqa: E402
from lowbit.kernels.triton_mma_planes import planes_fit  # noqa: E402
from lowbit.kernels.triton_weight_only import (  # noqa: E402
    KernelConfig, batch_bucket, candidates, default_config, weight_only_linear_triton,
)
from lowbit.modules import QuantLinear  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def bf16_dot_in_interpreter():
    """Triton 3.9's interpreter multiplies bf16 dot operands as their raw uint16 bit patterns
    (bf16 is stored as uint16 there); on the GPU the tensor cores read them as bf16. Widen them
    to float32 (exact) before the interpreter's matmul, so the test checks our kernel, not that."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        as_f32 = (h.data.astype(np.uint32) << 16).view(np.float32)
        return interpreter.TensorHandle(as_f32, tl.float32)

    def create_dot(self, a, b, d, *args):
        return original(self, widen(a), widen(b), d, *args)

    builder.create_dot = create_dot
    yield
    builder.create_dot = original


in_this_process = pytest.mark.skipif(
    TRITON_PREIMPORTED, reason="Triton was imported before TRITON_INTERPRET was set; these "
    "run in a fresh process (test_kernels_in_fresh_process)")


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="the tests run in this process")
def test_kernels_in_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


# bf16 operands and bf16 output: ~2^-8 relative rounding per element, accumulated in float32.
# The interpreter truncates (not rounds) float32 → bf16, which roughly doubles that.
BF16_TOL = 1.5e-2


def make_layer(n: int, k: int, spec: FormatSpec, bias: bool, seed: int,
               dtype=torch.bfloat16) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    rows, groups = (1, 1) if spec.group_size == 0 else (n, spec.n_groups(k))
    codes = torch.randint(0, spec.qmax + 1, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(rows, groups, generator=g) * 0.02 + 0.005).to(dtype)
    zero = None if spec.sym else torch.randint(0, spec.qmax + 1, (rows, groups), generator=g,
                                               dtype=torch.int32)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec), b)


def reference64(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    w = layer.dequantized_weight(torch.float64)
    out = x.double() @ w.T
    return out + layer.bias.detach().double() if layer.bias is not None else out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach()
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out.double() - ref).norm() / ref.norm())


def random_x(m: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g).to(dtype)


FORMATS = [
    FormatSpec(bits=4, sym=True, group_size=32),
    FormatSpec(bits=4, sym=False, group_size=64),
    FormatSpec(bits=4, sym=False, group_size=128),
    FormatSpec(bits=8, sym=True, group_size=-1),
    FormatSpec(bits=8, sym=False, group_size=-1),
]


@in_this_process
@pytest.mark.parametrize("spec", FORMATS, ids=lambda s: s.label().replace(" ", "-"))
@pytest.mark.parametrize("path", ["gemv", "gemv-planes", "gemv-planes-split", "mma", "mma-split",
                                  "planes", "planes-split", "dequant"])
def test_each_path_matches_float64(spec, path):
    k = 256 if spec.group_size > 0 else 200  # per-channel: K not a multiple of any tile
    n, m = 40, (1 if path.startswith("gemv") else 3)
    layer = make_layer(n, k, spec, bias=True, seed=hash((spec, path)) % 1000)
    x = random_x(m, k, seed=1)
    cfg = {
        "gemv": KernelConfig("gemv", block_n=16, block_k=64, unroll=3, split_k=1),
        "gemv-planes": KernelConfig("gemv_planes", block_n=16, block_k=64, unroll=3),
        "gemv-planes-split": KernelConfig("gemv_planes", block_n=32, block_k=32, unroll=2,
                                          split_k=3),
        "mma": KernelConfig("mma", block_n=16, block_m=16, block_k=64, split_k=1),
        "mma-split": KernelConfig("mma", block_n=32, block_m=16, block_k=32, split_k=3),
        "planes": KernelConfig("planes", block_n=16, block_m=16, block_k=128, split_k=1),
        "planes-split": KernelConfig("planes", block_n=32, block_m=16, block_k=64, split_k=3),
        "dequant": KernelConfig("dequant"),
    }[path]
    if cfg.path == "planes" and not planes_fit(WeightLayout.of(layer), cfg.block_k):
        with pytest.raises(ValueError):  # fewer than 16 words per tile: the tuner skips it
            weight_only_linear_triton(x, layer, cfg)
        return
    out = weight_only_linear_triton(x, layer, cfg)
    assert out.shape == (m, n) and out.dtype == x.dtype
    assert rel_err(out, reference64(x, layer)) < BF16_TOL


@in_this_process
@pytest.mark.parametrize("m", [1, 3, 17])
def test_odd_batches_and_noncontiguous_input(m):
    spec = FormatSpec(bits=4, sym=False, group_size=32)
    n, k = 24, 96  # K = 3 groups: not a multiple of a 64-wide tile
    layer = make_layer(n, k, spec, bias=False, seed=m)
    wide = random_x(m, 2 * k, seed=m + 10)
    x = wide[:, ::2]  # stride 2 along K
    assert not x.is_contiguous()
    ref = reference64(x, layer)
    for cfg in (default_config(m), KernelConfig("mma", block_n=16, block_m=16, block_k=64,
                                                split_k=2)):
        out = weight_only_linear_triton(x, layer, cfg)
        assert rel_err(out, ref) < BF16_TOL, cfg.label()
    layer8 = make_layer(n, k, FormatSpec(bits=8, sym=False, group_size=-1), bias=True, seed=m)
    ref8 = reference64(x, layer8)
    for cfg in (KernelConfig("planes", block_n=16, block_m=32, block_k=64, split_k=2),
                KernelConfig("gemv", block_n=8, block_k=32, unroll=2) if m == 1 else None,
                KernelConfig("gemv_planes", block_n=8, block_k=32, unroll=2) if m == 1 else None):
        if cfg is None:
            continue
        out = weight_only_linear_triton(x, layer8, cfg)
        assert rel_err(out, ref8) < BF16_TOL, cfg.label()


@in_this_process
def test_3d_input_and_fp16_with_bf16_scales():
    spec = FormatSpec(bits=4, sym=True, group_size=64)
    layer = make_layer(32, 128, spec, bias=True, seed=5)  # scales and bias stay bf16
    x = random_x(6, 128, seed=6, dtype=torch.float16).reshape(2, 3, 128)
    out = weight_only_linear_triton(x, layer, default_config(6))
    assert out.shape == (2, 3, 32) and out.dtype == torch.float16
    assert rel_err(out.reshape(6, 32), reference64(x.reshape(6, 128), layer)) < BF16_TOL


@in_this_process
def test_per_tensor_scale():
    spec = FormatSpec(bits=8, sym=False, group_size=0)
    layer = make_layer(24, 64, spec, bias=False, seed=7)
    x = random_x(2, 64, seed=8)
    out = weight_only_linear_triton(x, layer, default_config(2))
    assert rel_err(out, reference64(x, layer)) < BF16_TOL


@in_this_process
def test_split_k_accumulates_every_split():
    # Many splits over few tiles: some splits get no tile at all and must add nothing.
    spec = FormatSpec(bits=4, sym=False, group_size=32)
    layer = make_layer(16, 128, spec, bias=True, seed=9)
    x = random_x(1, 128, seed=10)
    ref = reference64(x, layer)
    for path in ("gemv", "gemv_planes", "mma"):
        cfg = KernelConfig(path, block_n=16, block_m=16, block_k=32, unroll=2, split_k=8)
        assert rel_err(weight_only_linear_triton(x, layer, cfg), ref) < BF16_TOL, path


HALF2_FORMATS = [f for f in FORMATS if f.bits == 4] + [FormatSpec(bits=4, sym=False, group_size=-1)]


@in_this_process
@pytest.mark.parametrize("spec", HALF2_FORMATS, ids=lambda s: s.label().replace(" ", "-"))
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("block_k", [64, 256])
@pytest.mark.parametrize("fuse_x", [False, True], ids=["x-pass", "x-fused"])
def test_gemv_half2_matches_float64(spec, split, block_k, fuse_x):
    # K = 200 per-channel: the last word and the last 128-input chunk are partial. A 256 tile
    # holds several segments (one per group, at most 128 inputs each).
    k = 512 if spec.group_size > 0 else 200
    layer = make_layer(40, k, spec, bias=True, seed=hash((spec, split, block_k)) % 1000)
    x = random_x(1, k, seed=2)
    cfg = KernelConfig("gemv_half2", block_n=16, block_k=block_k, unroll=2, split_k=split,
                       fuse_x=fuse_x)
    out = weight_only_linear_triton(x, layer, cfg)
    assert out.shape == (1, 40) and out.dtype == x.dtype
    assert rel_err(out, reference64(x, layer)) < BF16_TOL


@in_this_process
def test_gemv_half2_scales_large_and_tiny_inputs_per_chunk():
    # Inputs far outside float16's range in one chunk and tiny ones in another: each 128-input
    # chunk gets its own power of two, so neither overflows nor drowns.
    from lowbit.kernels.triton_xhalf2 import x_half2

    spec = FormatSpec(bits=4, sym=False, group_size=128)
    layer = make_layer(24, 384, spec, bias=False, seed=21)
    x = random_x(1, 384, seed=22).float()
    x[0, :128] *= 3e5
    x[0, 128:256] *= 1e-6
    x = x.to(torch.bfloat16)
    xh, xe = x_half2(x, layout_kw := WeightLayout.of(layer).kw)
    assert xh.shape == (4, 1, layout_kw) and xe.shape == (1, 3)
    lows = (xh & 0xFFFF).to(torch.int16).view(torch.float16).float()
    assert lows.abs().max() < 16 and lows.abs().max() >= 8
    assert torch.all(torch.log2(xe) == torch.log2(xe).round())  # powers of two
    ref = reference64(x, layer)
    for fuse_x in (False, True):
        cfg = KernelConfig("gemv_half2", block_n=8, block_k=128, fuse_x=fuse_x)
        assert rel_err(weight_only_linear_triton(x, layer, cfg), ref) < BF16_TOL
    # Dropping the scale would overflow float16: the chunk really is out of range.
    assert x[0, :128].float().abs().max() * 15 > 65504


@in_this_process
@pytest.mark.parametrize("m", [2, 3, 5, 8])
def test_gemv_half2_small_batches_share_the_unpacked_codes(m):
    spec = FormatSpec(bits=4, sym=False, group_size=64)
    layer = make_layer(24, 320, spec, bias=True, seed=27 + m)  # K = 320: a partial 256 tile
    wide = random_x(m, 640, seed=28 + m)
    x = wide[:, ::2]  # stride 2 along K
    ref = reference64(x, layer)
    for split in (1, 2):
        for fuse_x in (False, True) if m <= 4 else (False,):
            cfg = KernelConfig("gemv_half2", block_n=8, block_k=256, unroll=2, split_k=split,
                               fuse_x=fuse_x)
            out = weight_only_linear_triton(x, layer, cfg)
            assert out.shape == (m, 24)
            assert rel_err(out, ref) < BF16_TOL, cfg.label()
    # x paired in the kernel for up to 4 rows; more rows than one program holds go elsewhere.
    if m > 4:
        with pytest.raises(ValueError):
            weight_only_linear_triton(x, layer, KernelConfig("gemv_half2", fuse_x=True))
    with pytest.raises(ValueError):
        weight_only_linear_triton(random_x(9, 320, 1), layer, KernelConfig("gemv_half2"))


@in_this_process
@pytest.mark.parametrize("fuse_x", [False, True], ids=["x-pass", "x-fused"])
def test_gemv_half2_reads_no_scale_or_zero_past_k(fuse_x):
    # K = 320 in 256-input tiles: the last tile's last segments lie past K. Each row's scales
    # and zeros are followed by poison (NaN scales; zeros that make an infinite float16), so
    # reading a group past K anywhere (the last row's reads would run off the tensor) shows.
    spec = FormatSpec(bits=4, sym=False, group_size=64)
    layer = make_layer(24, 320, spec, bias=False, seed=31)
    ref = reference64(random_x(2, 320, seed=32), layer)
    for name, poison in (("weight_scale", float("nan")), ("weight_zero", 0x1800)):
        t = getattr(layer, name)
        padded = torch.full((t.shape[0], t.shape[1] + 4), poison, dtype=t.dtype)
        padded[:, :t.shape[1]] = t
        setattr(layer, name, padded[:, :t.shape[1]])
    for split in (1, 2):
        cfg = KernelConfig("gemv_half2", block_n=8, block_k=256, split_k=split, fuse_x=fuse_x)
        out = weight_only_linear_triton(random_x(2, 320, seed=32), layer, cfg)
        assert rel_err(out, ref) < BF16_TOL, cfg.label()


@in_this_process
def test_gemv_half2_split_k_sums_in_kernel_and_leaves_counters_zero(monkeypatch):
    from lowbit.kernels import triton_splitk

    spec = FormatSpec(bits=4, sym=False, group_size=64)
    layer = make_layer(40, 512, spec, bias=True, seed=25)
    x = random_x(1, 512, seed=26)
    cfg = KernelConfig("gemv_half2", block_n=16, block_k=64, unroll=2, split_k=4, fuse_x=True,
                       maxnreg=168)
    first = weight_only_linear_triton(x, layer, cfg)
    assert rel_err(first, reference64(x, layer)) < BF16_TOL
    assert int(triton_splitk.split_counters(x.device, 3).abs().sum()) == 0
    assert torch.equal(weight_only_linear_triton(x, layer, cfg), first)  # same order every call
    # No counters (a CUDA graph being captured before any existed): a second launch sums.
    monkeypatch.setattr(triton_splitk, "split_counters", lambda device, tiles: None)
    assert torch.equal(weight_only_linear_triton(x, layer, cfg), first)


@in_this_process
def test_gemv_half2_rejects_8_bit_codes():
    layer = make_layer(16, 128, FormatSpec(bits=8, sym=True, group_size=-1), bias=False, seed=23)
    with pytest.raises(ValueError):
        weight_only_linear_triton(random_x(1, 128, 24), layer, KernelConfig("gemv_half2"))


PAIRS_FORMATS = [f for f in FORMATS if f.bits == 4] + [FormatSpec(bits=4, sym=True, group_size=-1)]


@in_this_process
@pytest.mark.parametrize("spec", PAIRS_FORMATS, ids=lambda s: s.label().replace(" ", "-"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,split", [(1, 1), (3, 3), (17, 1), (33, 2)])  # 33: three batch tiles, K split
def test_pairs_matches_float64_with_codes_in_input_order(spec, dtype, m, split):
    # Per-channel K = 200: 64-input tiles 64, 64, 64, 8 (a partial last tile), which three splits
    # share as 2, 2 and none (an empty split must add nothing). Grouped formats: K = 384, six
    # or twelve whole tiles. N = 40: a partial last block of rows. The codes are random, so a
    # wrong order of codes within a word would show as a large error.
    n, k = 40, 200 if spec.group_size <= 0 else 384
    layer = make_layer(n, k, spec, bias=True, seed=hash((spec, m)) % 1000, dtype=dtype)
    wide = random_x(m, 2 * k, seed=m + 3, dtype=dtype)
    x = wide[:, ::2]  # non-contiguous input
    cfg = KernelConfig("pairs", block_n=16, block_m=16, block_k=64, split_k=split)
    out = weight_only_linear_triton(x, layer, cfg)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, reference64(x, layer)) < BF16_TOL


@triton.jit
def _pairs_tile_kernel(wq_ptr, z_ptr, s_ptr, out_ptr, BN: tl.constexpr, BW: tl.constexpr,
                       DT: tl.constexpr):
    rn = tl.arange(0, BN)
    words = tl.load(wq_ptr + rn[:, None] * BW + tl.arange(0, BW)[None, :])
    bits = tl.load(s_ptr + rn).to(tl.int16, bitcast=True).to(tl.int32)
    w = dequant_tile(words, tl.load(z_ptr + rn), bits, DT, BN, BW, False)
    tl.store(out_ptr + rn[:, None] * (BW * 8) + tl.arange(0, BW * 8)[None, :], w)


@in_this_process
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_pairs_weights_equal_the_reference_dequantization(dtype):
    # The tile the kernel multiplies is ((q - zero)·scale) rounded once to the input dtype, in
    # input order: the reference's bits (float16 exactly; the interpreter truncates where it
    # should round to bfloat16, so there within one unit in the last place).
    layer = make_layer(16, 64, FormatSpec(bits=4, sym=False, group_size=-1), bias=False, seed=31,
                       dtype=dtype)
    out = torch.empty(16, 64, dtype=dtype)
    _pairs_tile_kernel[(1,)](layer.weight_packed, layer.weight_zero[:, 0].contiguous(),
                             layer.weight_scale[:, 0].contiguous(), out, BN=16, BW=8,
                             DT=tl.bfloat16 if dtype == torch.bfloat16 else tl.float16)
    ref = layer.dequantized_weight(torch.float32).to(dtype)
    if dtype == torch.float16:
        assert torch.equal(out, ref)
    else:
        ulp = ref.float().abs() * 2.0 ** -7
        assert ((out.float() - ref.float()).abs() <= ulp).all()


@in_this_process
def test_pairs_needs_scales_in_the_input_dtype():
    layer = make_layer(16, 128, FormatSpec(bits=4, sym=True, group_size=64), bias=False, seed=3)
    x = random_x(4, 128, seed=4, dtype=torch.float16)  # bf16 scales
    with pytest.raises(ValueError, match="scales in the input dtype"):
        weight_only_linear_triton(x, layer, KernelConfig("pairs", block_m=16))


FRAG_FORMATS = [FormatSpec(bits=4, sym=False, group_size=64),
                FormatSpec(bits=4, sym=False, group_size=128),
                FormatSpec(bits=4, sym=True, group_size=-1),
                FormatSpec(bits=4, sym=True, group_size=0)]


def test_frag_repacking_puts_each_lanes_fragment_in_one_word():
    # Word (nb, kb, r, c, t), slot 4·kh + 2·h + e holds row 16·nb + 8·h + r, input
    # 64·kb + 16·t + 8·kh + 2·c + e: checked code by code against the packed layout.
    from lowbit.kernels.triton_mma_frag import repack_frag

    n, k = 40, 200  # padded to 128 rows and 256 inputs
    layer = make_layer(n, k, FormatSpec(bits=4, sym=True, group_size=-1), bias=False, seed=41)
    codes = unpack(layer.weight_packed, 4, k)             # the library's own unpacking
    frag = repack_frag(layer.weight_packed, n, k)
    assert frag.numel() == 128 * 256 // 8
    words = frag.reshape(8, 4, 8, 4, 4)                   # (nb, kb, r, c, t)
    g = torch.Generator().manual_seed(42)
    for _ in range(400):
        nb, kb, r, c, t, kh, h, e = (int(torch.randint(0, v, (1,), generator=g))
                                     for v in (8, 4, 8, 4, 4, 2, 2, 2))
        row, col = 16 * nb + 8 * h + r, 64 * kb + 16 * t + 8 * kh + 2 * c + e
        got = (int(words[nb, kb, r, c, t]) >> (4 * (4 * kh + 2 * h + e))) & 0xF
        want = int(codes[row, col]) if row < n and col < k else 0
        assert got == want, (nb, kb, r, c, t, kh, h, e)


@in_this_process
@pytest.mark.parametrize("spec", FRAG_FORMATS, ids=lambda s: s.label().replace(" ", "-"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,split,block_n,block_k", [(1, 1, 64, 64), (3, 3, 128, 128),
                                                     (17, 2, 64, 256)])
def test_frag_matches_float64(spec, dtype, m, split, block_n, block_k):
    # N = 40: a partial block of rows (the copy is padded to 128). Per-channel / per-tensor
    # K = 200: a partial last tile, and with three splits of 64-input tiles one split is empty.
    # K tiles of 256 inputs span two groups of 128 (four of 64): each block reads its own.
    n, k = 40, 200 if spec.group_size <= 0 else 384
    layer = make_layer(n, k, spec, bias=True, seed=hash((spec, m, block_k)) % 1000, dtype=dtype)
    x = random_x(m, 2 * k, seed=m + 5, dtype=dtype)[:, ::2]  # non-contiguous input
    cfg = KernelConfig("frag", block_n=block_n, block_m=16 if m <= 16 else 32, block_k=block_k,
                       split_k=split)
    out = weight_only_linear_triton(x, layer, cfg)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, reference64(x, layer)) < BF16_TOL


@in_this_process
def test_frag_copies_are_made_once_and_follow_the_codes():
    import gc

    from lowbit.kernels import triton_mma_frag as fr

    layer = make_layer(32, 128, FormatSpec(bits=4, sym=False, group_size=64), False, seed=43)
    lo = WeightLayout.of(layer)
    first = fr.frag_copies(lo, torch.bfloat16)
    assert fr.frag_copies(WeightLayout.of(layer), torch.bfloat16)[0] is first[0]  # cached
    assert fr.frag_copies(lo, torch.float16, build=False) is None                # per dtype
    x = random_x(2, 128, seed=44)
    cfg = KernelConfig("frag", block_n=64, block_m=16, block_k=64)
    before = weight_only_linear_triton(x, layer, cfg)
    with torch.no_grad():  # codes changed in place (a state dict loaded): the copy is remade
        layer.weight_packed.copy_(layer.weight_packed ^ 0x11111111)
    assert fr.frag_copies(lo, torch.bfloat16, build=False) is None
    after = weight_only_linear_triton(x, layer, cfg)
    assert rel_err(after, reference64(x, layer)) < BF16_TOL
    assert not torch.equal(before, after)
    layer.weight_scale = layer.weight_scale * 2  # new scales, same codes: remade too
    assert fr.frag_copies(WeightLayout.of(layer), torch.bfloat16, build=False) is None
    assert rel_err(weight_only_linear_triton(x, layer, cfg), reference64(x, layer)) < BF16_TOL
    key = fr._copies_key(lo, torch.bfloat16)
    del layer, lo
    gc.collect()
    assert key not in fr._COPIES  # dropped with the codes' tensor


@in_this_process
def test_frag_refuses_what_it_cannot_compute():
    layer = make_layer(16, 128, FormatSpec(bits=4, sym=True, group_size=32), bias=False, seed=45)
    with pytest.raises(ValueError):
        weight_only_linear_triton(random_x(2, 128, 46), layer,
                                  KernelConfig("frag", block_n=64, block_m=16, block_k=64))
    layer = make_layer(16, 128, FormatSpec(bits=4, sym=True, group_size=64), bias=False, seed=47)
    with pytest.raises(ValueError):  # bf16 scales, fp16 inputs
        weight_only_linear_triton(random_x(2, 128, 48, dtype=torch.float16), layer,
                                  KernelConfig("frag", block_n=64, block_m=16, block_k=64))
    with pytest.raises(ValueError, match="256-column"):  # the shape that raced on the H100
        weight_only_linear_triton(random_x(2, 128, 49), layer,
                                  KernelConfig("frag", block_n=128, block_m=128, num_warps=8))


@in_this_process
def test_dispatch_rules(monkeypatch):
    spec = FormatSpec(bits=4, sym=False, group_size=128)
    layer = make_layer(16, 256, spec, bias=False, seed=11)
    x = random_x(1, 256, seed=12)
    assert triton_supports(layer, x)
    assert not triton_supports(layer, x.float())  # float32 activations → reference kernel
    three_bit = make_layer(16, 256, FormatSpec(bits=3, sym=False, group_size=128), False, 13)
    assert not triton_supports(three_bit, x)
    # CPU keeps the PyTorch reference; CUDA gets the Triton entry point (with its own fallback).
    assert select_kernel("cpu", "weight_only").__name__ == "weight_only_linear"
    assert select_kernel("cuda", "weight_only").__name__ == "weight_only_linear_cuda"
    assert [batch_bucket(m) for m in (1, 2, 3, 17, 64, 65, 5000)] == [1, 2, 4, 32, 64, 128, 4096]
    for m in (1, 2, 16, 64, 128, 1024):
        for bits in (4, 8):
            # Batch-1 kernels only at batch 1; the half2 GEMV up to 2 rows (4-bit only).
            paths = {c.path for c in candidates(m, bits)}
            assert m == 1 or not paths & {"gemv", "gemv_planes"}
            assert ("gemv_half2" in paths) == (bits == 4 and m <= 2)
            assert default_config(m, bits).path in {c.path for c in candidates(m, bits)}
    # The fragment-ordered kernel (a second copy of the codes): only when asked for, then for
    # 4-bit batches from 2.
    monkeypatch.delenv("LOWBIT_FRAG_LAYOUT", raising=False)
    assert "frag" not in {c.path for m in (2, 16, 256) for c in candidates(m, 4)}
    monkeypatch.setenv("LOWBIT_FRAG_LAYOUT", "1")
    for m in (1, 2, 16, 64, 128, 256, 1024):
        assert ("frag" in {c.path for c in candidates(m, 4)}) == (m >= 2)
        assert all(c.block_m <= 256 for c in candidates(m, 4) if c.path == "frag")
        assert "frag" not in {c.path for c in candidates(m, 8)}
    monkeypatch.delenv("LOWBIT_FRAG_LAYOUT")
    # Batch 1: 4-bit layers take the half2 GEMV, 8-bit ones (which it cannot read) the others.
    assert {c.path for c in candidates(1, 4)} == {"gemv_half2"}
    assert "gemv_half2" not in {c.path for c in candidates(1, 8)}
    with pytest.raises(ValueError):
        weight_only_linear_triton(random_x(2, 256, 14), layer, KernelConfig("gemv"))


def test_split_counters_are_never_freed_under_a_captured_graph():
    # A graph captured with the old buffer keeps its address: growing must keep it alive.
    import weakref

    from lowbit.kernels import triton_splitk

    dev = torch.device("cpu")
    small = triton_splitk.split_counters(dev, 10)
    old = weakref.ref(small)
    del small
    big = triton_splitk.split_counters(dev, 20000)
    assert big.numel() >= 20000 and int(big.abs().sum()) == 0
    assert old() is not None and old() is not big
    assert triton_splitk.split_counters(dev, 5) is big  # the largest one serves smaller grids


@in_this_process
def test_tuner_falls_back_to_plain_triton_kernels_when_no_candidate_runs():
    # If every candidate fails (here: no CUDA to time them on; on a GPU, a Triton that rejects
    # the half2 GEMV's inline assembly), the choice must be a kernel without inline assembly.
    from lowbit.kernels.triton_weight_only import _tune

    layer = make_layer(16, 256, FormatSpec(bits=4, sym=False, group_size=128), False, seed=33)
    x = random_x(1, 256, seed=34)
    cfg = _tune(x, WeightLayout.of(layer), None, key=("test",))
    assert cfg == default_config(1, bits=8) and cfg.path != "gemv_half2"
    assert rel_err(weight_only_linear_triton(x, layer, cfg), reference64(x, layer)) < BF16_TOL
