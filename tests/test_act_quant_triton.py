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

pytest.importorskip("triton")

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")


def _stream(x, static_scale, fp8, rows):
    from lowbit.kernels.triton_act_quant import quantize_rows_stream

    return quantize_rows_stream(x, static_scale, fp8, rows, programs=3)  # 8 rows: 3, 3 and 2 per program


@interpreted
@pytest.mark.parametrize("K", [300, 4100])  # one block kept in registers; two passes over 2048-wide blocks
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("kernel", ["rows", "stream"])
def test_int8_codes_and_scales_equal_the_pytorch_path(K, static, kernel):
    from lowbit.kernels.activations import int8_per_token
    from lowbit.kernels.triton_act_quant import quantize_rows

    g = torch.Generator().manual_seed(K + static)
    x = (torch.randn(5, K, generator=g) * torch.rand(5, 1, generator=g) * 4).bfloat16()
    static_scale = torch.tensor(0.01) if static else None  # static: outliers past the range clamp
    q, scale = (quantize_rows if kernel == "rows" else _stream)(x, static_scale, fp8=False, rows=8)
    q_ref, scale_ref = int8_per_token(x, static_scale)
    assert q.shape == (8, K) and scale.shape == (8, 1)
    assert torch.equal(q[:5], q_ref)
    assert torch.equal(scale[:5], scale_ref)
    assert (q[5:] == 0).all()  # padding rows for the GEMM: zero codes
    if static:
        assert (q_ref.abs() == 127).any() or (q_ref == -128).any()  # the clamp was exercised


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_act_quant_in_fresh_process():
    run_in_fresh_process(__file__)
