"""GPTQ's fused Triton column loop (kernels/triton_gptq.py) against the PyTorch loop.

Runs on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``), in a fresh process when
Triton was imported before this module (see test_kernels_triton.py for why). Both loops round
from the same float64 quotient; the float32 error updates may differ by an ulp, so codes are
compared for near-total agreement and the output error for equality within 1e-4 relative.
"""
from __future__ import annotations

from triton_interpret import TRITON_PREIMPORTED, run_in_fresh_process  # first: it sets the mode

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from lowbit.algorithms import gptq as gptq_mod  # noqa: E402
from lowbit.algorithms.gptq import GPTQParams, gptq  # noqa: E402
from lowbit.algorithms.rtn import ClipSearch  # noqa: E402
from lowbit.formats import FormatSpec  # noqa: E402

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")


def correlated_problem(out_f, in_f, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_f, in_f, generator=g) / in_f ** 0.5 + torch.eye(in_f)
    X = torch.randn(n, in_f, generator=g) @ mix
    X[:, 3] = 0  # a dead input
    H = 2 * X.t() @ X / n
    W = torch.randn(out_f, in_f, generator=g)
    return W, H


def both_loops(W, H, spec, params):
    try:
        gptq_mod.FUSED_LOOP = False
        ref = gptq(W, H, spec, params)
        gptq_mod.FUSED_LOOP = True
        fused = gptq(W, H, spec, params)
    finally:
        gptq_mod.FUSED_LOOP = None
    return ref, fused


CASES = [
    (FormatSpec(bits=4, sym=False, group_size=16), GPTQParams(block_size=32)),
    (FormatSpec(bits=3, sym=True, group_size=-1), GPTQParams(block_size=16)),
    (FormatSpec(bits=4, sym=False, group_size=16), GPTQParams(block_size=32, act_order=True, static_groups=True,
                                                               clip=ClipSearch(grid=5, min_ratio=0.7))),
    (FormatSpec(bits=2, sym=False, group_size=16), GPTQParams(block_size=32)),  # dynamic groups
]


@interpreted
@pytest.mark.parametrize("spec,params", CASES, ids=["g16", "channel-sym", "act-order-clip", "dynamic-2bit"])
def test_fused_loop_matches_torch_loop(spec, params):
    W, H = correlated_problem(21, 48)  # rows not a multiple of the row tile
    ref, fused = both_loops(W, H, spec, params)
    agree = (ref.codes == fused.codes).float().mean().item()
    assert agree > 0.995, agree
    torch.testing.assert_close(fused.scale, ref.scale, rtol=1e-3, atol=0)
    assert abs(fused.stats["proxy_err"] - ref.stats["proxy_err"]) <= 1e-3 * ref.stats["proxy_err"]


@interpreted
def test_fused_loop_with_identity_hessian_is_rtn():
    """With H = I no error is pushed anywhere, so the fused loop must give RTN's codes exactly."""
    W = torch.randn(9, 32, generator=torch.Generator().manual_seed(1))
    spec = FormatSpec(bits=4, sym=False, group_size=8)
    try:
        gptq_mod.FUSED_LOOP = True
        fused = gptq(W, torch.eye(32), spec, GPTQParams(block_size=16))
    finally:
        gptq_mod.FUSED_LOOP = None
    from lowbit.algorithms.rtn import rtn
    ref = rtn(W, spec)
    assert torch.equal(fused.codes, ref.codes)


def test_round_half_even_matches_torch():
    """The kernel's rounding helper, run through the interpreter on ties and near-ties."""
    if TRITON_PREIMPORTED:
        pytest.skip("Triton imported compiled-mode; see the fresh-process test")
    from lowbit.kernels.triton_gptq import round_half_even_into

    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999999999, 2.5000000001, -3.2, 7.0],
                     dtype=torch.float64)
    assert torch.equal(round_half_even_into(x), torch.round(x))


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_fused_loop_in_fresh_process():
    run_in_fresh_process(__file__)
