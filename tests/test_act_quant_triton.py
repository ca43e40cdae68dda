"""The Triton activation-quantization pre-pass (kernels/triton_act_quant.quantize_rows) against
the PyTorch arithmetic of the CPU path (kernels/activations.py): int8 codes and scales equal.

Runs on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``), in a fresh process when
Triton was imported compiled-mode before this module (see test_kernels_triton.py for why). The
kernel rounds half to even with plain float32 arithmetic (``int8_codes``), so the interpreter runs
exactly what the GPU runs. E4M3 codes are not compared here:
the interpreter's float8 conversion rounds some values to the wrong binade (124.3 → 64), so the
GPU benchmark checks them instead (``fp8_codes_equal`` in bench/w8a8_kernels.py).
"""
from __future__ import annotations

from triton_interpret import TRITON_PREIMPORTED, run_in_fresh_process  # first: it sets the mode

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from lowbit.kernels.triton_act_quant import quotient  # noqa: E402

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")


@interpreted
@pytest.mark.parametrize("K", [300, 4100, 16400])  # one block kept in registers (two sizes); two passes over 2048-wide blocks
@pytest.mark.parametrize("static", [False, True])
def test_int8_codes_and_scales_equal_the_pytorch_path(K, static):
    from lowbit.kernels.activations import int8_per_token
    from lowbit.kernels.triton_act_quant import quantize_rows

    g = torch.Generator().manual_seed(K + static)
    x = (torch.randn(5, K, generator=g) * torch.rand(5, 1, generator=g) * 4).bfloat16()
    static_scale = torch.tensor(0.01) if static else None  # static: outliers past the range clamp
    q, scale = quantize_rows(x, static_scale, fp8=False, rows=8)
    q_ref, scale_ref = int8_per_token(x, static_scale)
    assert q.shape == (8, K) and scale.shape == (8, 1)
    assert torch.equal(q[:5], q_ref)
    assert torch.equal(scale[:5], scale_ref)
    assert (q[5:] == 0).all()  # padding rows for the GEMM: zero codes
    if static:
        assert (q_ref.abs() == 127).any() or (q_ref == -128).any()  # the clamp was exercised


@triton.jit
def _quotient_kernel(x_ptr, s_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x, s = tl.load(x_ptr + offs), tl.load(s_ptr + offs)
    tl.store(out_ptr + offs, quotient(x, s, tl.math.div_rn(1.0, s)))


@interpreted
def test_quotient_is_the_ieee_division():
    """``quotient`` (a reciprocal per row, then two FMA corrections) against float32 division on
    4M pairs: random magnitudes, quotients a hair from half-integers (where a wrong last bit
    changes the code), and significands of all ones (the reciprocal's worst case)."""
    g = torch.Generator().manual_seed(0)
    n = 1 << 20
    s = torch.exp2(torch.randint(-40, 10, (n,), generator=g).float()) * (1 + torch.rand(n, generator=g))
    x_random = torch.randn(n, generator=g) * s * 60
    k = torch.randint(-300, 300, (n,), generator=g).float() + 0.5  # quotients next to k + 1/2
    x_half = (k * s) * (1 + (torch.rand(n, generator=g) - 0.5) * 2 ** -21)
    ones = torch.tensor(1.99999988079071044921875)  # 2 - 2^-23: every significand bit set
    s_ones = ones * torch.exp2(torch.randint(-30, 5, (n,), generator=g).float())
    x_ones = ones * torch.exp2(torch.randint(-20, 14, (n,), generator=g).float()) * torch.sign(torch.randn(n, generator=g))
    xs = torch.cat([x_random, x_half, x_ones, x_half.roll(1)])
    ss = torch.cat([s, s, s_ones, s])
    out = torch.empty_like(xs)
    _quotient_kernel[(xs.numel() // n,)](xs, ss, out, BLOCK=n)
    want = (xs / ss).clamp(-512, 512)
    assert torch.equal(out.clamp(-512, 512), want), int((out.clamp(-512, 512) != want).sum())


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_act_quant_in_fresh_process():
    run_in_fresh_process(__file__)
