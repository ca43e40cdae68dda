"""The one-launch W8A8 int8 GEMV (kernels/triton_int8_gemv.py) against the exact integer path.

Runs on the CPU through Triton's interpreter (in a fresh process when Triton was imported
compiled-mode first; see test_kernels_triton.py). The codes come from the same arithmetic as
kernels/activations.py (division, round half to even, clamp), the int32 sums are exact and the
epilogue is the reference's float32 ``acc · s_x · s_w + bias``, so float32 outputs must be equal;
bfloat16 ones within one bfloat16 step (the interpreter truncates where the GPU rounds).
Random inputs with an outlier channel (so one token's scale is set by it) and ties.
"""
from __future__ import annotations

from triton_interpret import TRITON_PREIMPORTED, run_in_fresh_process  # first: it sets the mode

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")


def exact_path(x, codes, ws, static, bias):
    from lowbit.kernels.activations import int8_per_token

    q, sx = int8_per_token(x, static)
    acc = q.long() @ codes.long().t()
    y = acc.to(torch.int32).float() * sx.float() * ws.float().reshape(1, -1)
    return y + bias.float() if bias is not None else y


def inputs(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[0, 3] = 37.0  # an outlier channel sets the first token's scale
    # Ties (half-way codes) in the last token, from its final absmax: round half to even.
    x[-1, 4:8] = torch.tensor([0.5, -0.5, 1.5, -2.5]) * (x[-1].abs().max() / 127.5)
    codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    ws = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    return x, codes, ws, bias


@interpreted
@pytest.mark.parametrize("m,k,n,cfg", [
    (1, 288, 40, (16, 64, 1, 1)),    # K a partial last tile (4.5 of 64), N a partial last block
    (2, 256, 24, (16, 64, 3, 1)),    # split-K: 4 tiles over 3 splits, the last one empty
    (3, 576, 64, (32, 256, 2, 2)),   # three rows in a four-row program; K = 2.25 tiles
    (4, 192, 16, (16, 64, 4, 1)),
])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_int8_gemv_equals_the_integer_path(m, k, n, cfg, static):
    from lowbit.kernels.triton_int8_gemv import int8_gemv

    x, codes, ws, bias = inputs(m, k, n, seed=m * 100 + k)
    st = torch.tensor([0.04]) if static else None
    y = int8_gemv(x, codes, ws, st, bias, *cfg)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert torch.equal(y, exact_path(x, codes, ws, st, bias))
    y16 = int8_gemv(x.bfloat16(), codes, ws, st, None, *cfg)
    exact = exact_path(x.bfloat16(), codes, ws, st, None)
    assert ((y16.float() - exact).abs() <= exact.abs() * 2**-7).all()


@interpreted
def test_split_counters_are_left_zero():
    from lowbit.kernels.triton_int8_gemv import int8_gemv
    from lowbit.kernels.triton_splitk import split_counters

    x, codes, ws, bias = inputs(1, 256, 48, seed=5)
    for _ in range(2):  # the second call must see zeroed counters
        y = int8_gemv(x, codes, ws, None, bias, 16, 64, 4, 1)
        assert torch.equal(y, exact_path(x, codes, ws, None, bias))
    assert int(split_counters(x.device, 3)[:3].abs().sum()) == 0


@interpreted
def test_custom_operator_runs_the_gemv_and_has_a_shape_only_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import lowbit.kernels  # noqa: F401  (registers the operators)

    x, codes, ws, bias = inputs(2, 256, 40, seed=9)
    y = torch.ops.lowbit.w8a8_int8_gemv(x, codes, ws, None, bias)
    assert torch.equal(y, exact_path(x, codes, ws, None, bias))
    with FakeTensorMode() as mode:
        fake = torch.ops.lowbit.w8a8_int8_gemv(mode.from_tensor(x), mode.from_tensor(codes),
                                               mode.from_tensor(ws), None, None)
    assert fake.shape == (2, 40) and fake.dtype == x.dtype


def test_gemv_config_fills_the_gpu():
    from lowbit.kernels.triton_int8_gemv import gemv_config

    assert gemv_config(14336, 4096) == (64, 512, 1, 4)      # 224 programs of whole rows
    bn, bk, split, _ = gemv_config(4096, 14336)
    assert (bn, bk) == (32, 1024) and -(-4096 // bn) * split >= 256
    bn, bk, split, _ = gemv_config(1024, 4096)             # a k/v projection
    assert split == 4                                       # K has only 4 tiles of 1024
    assert gemv_config(576, 576)[2] >= 1


def test_int8_gemv_rejects_larger_batches():
    from lowbit.kernels.triton_int8_gemv import int8_gemv

    x, codes, ws, bias = inputs(5, 64, 8, seed=1)
    with pytest.raises(ValueError, match="at most 4 rows"):
        int8_gemv(x, codes, ws, None, bias)


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_int8_gemv_in_fresh_process():
    run_in_fresh_process(__file__)
