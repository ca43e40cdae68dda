"""The fused online Hadamard kernel (kernels/triton_hadamard.rotate_rows) against the float64
``x Q`` of ``algorithms.hadamard.randomized_hadamard``.

Runs on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``), in a fresh process when
Triton was imported compiled-mode before this module (see test_kernels_triton.py for why). The
interpreter multiplies float32 exactly where the GPU rounds the operands to TF32 (2^-11), and it
truncates float32 → bfloat16 where the GPU rounds to nearest, so bfloat16 results are held to
truncation's bound; the GPU's rounding is checked by the benchmark's error column
(bench/hadamard_cost.py). A second test compiles the kernel for the H100 (sm_90) without a GPU.
"""
from __future__ import annotations

from triton_interpret import TRITON_PREIMPORTED, run_in_fresh_process  # first: it sets the mode

import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from sm90_build import run_sm90_script  # noqa: E402

pytest.importorskip("triton")

interpreted = pytest.mark.skipif(TRITON_PREIMPORTED, reason="Triton imported compiled-mode; see the fresh-process test")

# (width, how the kernel splits it): powers of two as one product (64) or two (4096); Paley II
# 36 ⊗ 16 (SmolLM2's hidden 576); Paley I 12 ⊗ 128 (its MLP 1536); 20 ⊗ 128; Llama-3-8B's MLP
# 14336 = 28 ⊗ 512 (two products for 512, 16 ⊗ 32)
WIDTHS = [64, 576, 1536, 2560, 4096, 14336]


def _reference(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``x Q`` in float64: the dense ``Q`` up to 4096 wide; past it (the dense matrix and its
    orthogonality check cost minutes at 14336) the same product through the Kronecker identity
    ``vec(X) kron(A, B) = vec(Aᵀ X B)``, itself checked against the dense ``Q`` at 1536."""
    from lowbit.algorithms.hadamard import hadamard_factors, randomized_hadamard, sylvester

    n = signs.numel()
    if n <= 4096:
        return x.double() @ randomized_hadamard(signs)
    A, p = hadamard_factors(n)
    X = (x.double() * signs.double() / n ** 0.5).reshape(-1, A.shape[0], p)
    return (A.T @ X @ sylvester(p)).reshape(x.shape)


def test_the_factored_reference_is_the_dense_one():
    from lowbit.algorithms.hadamard import hadamard_factors, random_signs, randomized_hadamard, sylvester

    n = 1536
    x = torch.randn(3, n, dtype=torch.float64)
    signs = random_signs(n, 2)
    A, p = hadamard_factors(n)
    X = (x * signs.double() / n ** 0.5).reshape(-1, A.shape[0], p)
    factored = (A.T @ X @ sylvester(p)).reshape(x.shape)
    assert torch.allclose(factored, x @ randomized_hadamard(signs), atol=1e-12, rtol=0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@interpreted
@pytest.mark.parametrize("n", WIDTHS)
def test_rotation_equals_the_float64_product(n):
    from lowbit.algorithms.hadamard import random_signs
    from lowbit.kernels.triton_hadamard import rotate_rows

    g = torch.Generator().manual_seed(n)
    rows = 2 if n > 4096 else 5
    # rows of very different scales, one channel an outlier (what the rotation exists for)
    x = torch.randn(rows, n, generator=g) * torch.rand(rows, 1, generator=g) * 4
    x[:, 3] *= 300
    signs = random_signs(n, n)
    y = rotate_rows(x, signs)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert _rel(y, _reference(x, signs)) < 1e-6  # float32 accumulation of n (m + p) terms
    xb = x.bfloat16()
    yb = rotate_rows(xb, signs)
    assert yb.dtype == torch.bfloat16
    # the tile rounded to bfloat16 before each of up to three products, then the result:
    # four roundings (truncations here) of < 2^-7 each, RMS well under 2^-7 · 2
    assert _rel(yb, _reference(xb, signs)) < 2 ** -6
    xh = x.half()  # float16: float32 operands (TF32 on the GPU), one rounding of the result
    yh = rotate_rows(xh, signs)
    assert yh.dtype == torch.float16
    assert _rel(yh, _reference(xh, signs)) < 2 ** -9


@interpreted
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_odd_row_counts_strided_and_batched_inputs(rows):
    from lowbit.algorithms.hadamard import random_signs
    from lowbit.kernels.triton_hadamard import plan, rotate_rows

    n = 1536
    assert plan(n)[-1] == 8  # rows per program: 3 and 17 leave a partial last program
    g = torch.Generator().manual_seed(rows)
    wide = torch.randn(rows, n + 40, generator=g)
    x = wide[:, 7:7 + n]  # a row stride that is not the width
    signs = random_signs(n, 5)
    want = _reference(x, signs)
    assert _rel(rotate_rows(x, signs), want) < 1e-6
    # column-strided input (the kernel reads a contiguous copy)
    xt = torch.randn(n, rows, generator=g).T
    assert _rel(rotate_rows(xt, signs), _reference(xt, signs)) < 1e-6
    # (batch, seq, n) keeps its shape
    x3 = torch.randn(2, rows, n, generator=g)
    y3 = rotate_rows(x3, signs)
    assert y3.shape == x3.shape
    assert _rel(y3.reshape(-1, n), _reference(x3.reshape(-1, n), signs)) < 1e-6
    assert rotate_rows(x[:0], signs).shape == (0, n)


def test_widths_the_kernel_leaves_to_the_matmul_path():
    from lowbit.kernels.triton_hadamard import plan, supported

    assert not supported(96)      # 12 ⊗ 8: a Sylvester factor under tl.dot's 16
    assert not supported(7)       # no Hadamard matrix of order 7
    assert not supported(65536)   # a tile past a program's registers
    assert plan(14336) == (28, 32, 16, 32, 1)
    assert plan(576) == (36, 64, 1, 16, 16)


@interpreted
def test_width_mismatch_is_refused():
    from lowbit.algorithms.hadamard import random_signs
    from lowbit.kernels.triton_hadamard import rotate_rows

    with pytest.raises(ValueError, match="width"):
        rotate_rows(torch.randn(2, 64), random_signs(128, 0))
    with pytest.raises(ValueError, match="width"):
        rotate_rows(torch.randn(2, 96), random_signs(96, 0))


@pytest.mark.skipif(not TRITON_PREIMPORTED, reason="ran in this process")
def test_hadamard_kernel_in_fresh_process():
    run_in_fresh_process(__file__)


SM90 = textwrap.dedent('''
    import json
    import triton
    from triton.backends.compiler import GPUTarget
    from lowbit.kernels import triton_hadamard as t

    names = ["x_ptr", "s_ptr", "a_ptr", "h1_ptr", "h2_ptr", "y_ptr", "R", "stride_xr", "stride_yr",
             "inv_sqrt_n"]
    types = ["*bf16", "*i8", "*fp32", "*fp32", "*fp32", "*bf16", "i32", "i32", "i32", "fp32"]
    report = {}
    for n in (1536, 14336, 4096):
        m, mp, p1, p2, br = t.plan(n)
        sig = dict(zip(names, types))
        consts = dict(M=m, MP=mp, P1=p1, P2=p2, BR=br, DOT_BF16=True, INTERPRETED=False)
        sig.update({c: "constexpr" for c in consts})
        attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in names[:6]}
        src = triton.compiler.ASTSource(fn=t._hadamard_kernel, signature=sig, constexprs=consts,
                                        attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": t.num_warps(br * mp * p1 * p2)})
        ptx = k.asm["ptx"]
        report[n] = {"wgmma": ptx.count("wgmma.mma_async"), "local": ptx.count("st.local")}
    print(json.dumps(report))
''')


def test_hadamard_kernel_compiles_for_sm90_on_tensor_cores_without_spills():
    for n, r in run_sm90_script(SM90).items():
        assert r["wgmma"] >= 1 and r["local"] == 0, (n, r)


def test_which_inputs_the_fused_kernel_rotates():
    from lowbit.modules.input_hadamard import fused_kernel_applies

    assert fused_kernel_applies("cuda", torch.bfloat16, False)
    assert fused_kernel_applies("cuda", torch.float16, False)
    assert not fused_kernel_applies("cuda", torch.float32, False)  # keeps float32 precision
    assert not fused_kernel_applies("cuda", torch.bfloat16, True)  # no backward through the kernel
    assert not fused_kernel_applies("cpu", torch.bfloat16, False)
