"""The Gluon W8A8 GEMM (kernels/gluon_w8a8_mm.py): it builds for the H100 with its int8 MMAs kept
in flight, the dispatch sends it what it should, and a build failure falls back to Triton.

Gluon has no interpreter, so its arithmetic is checked on the GPU (``bench/w8a8_tile_sweep.py``
compares every candidate with ``torch._int_mm`` plus the same epilogue, bit for bit). Here the
kernel is compiled for sm_90 without a GPU (Triton's bundled ``ptxas``) in a fresh process, as in
test_kernels_compile_sm90.py: the kernel tests switch pytest's process to the interpreter.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from sm90_build import run_sm90_script

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import json, re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon import language as gl
    from lowbit.kernels import gluon_w8a8_mm as g
    report = {}
    for int8 in (True, False):
        code = gl.int8 if int8 else gl.float8e4nv
        ty = "i8" if int8 else "fp8e4nv"
        lay = lambda rows: repr(gl.NVMMASharedLayout.get_default_for([rows, 128], code))
        sig = {"a_desc": f"tensordesc<{ty}[128, 128],{lay(128)}>", "b_desc": f"tensordesc<{ty}[256, 128],{lay(256)}>",
               "b_half_desc": f"tensordesc<{ty}[128, 128],{lay(128)}>", "xs_ptr": "*fp32", "ws_ptr": "*bf16",
               "bias_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "N_MAIN": "i32",
               "stride_om": "i32"}
        consts = {"HAS_BIAS": True, "STAGES": 4, "GROUP_M": 8, "SPLIT_TAIL": True, "MMA_N": g.mma_n(256, int8),
                  "MMA_N_HALF": g.mma_n(128, int8), "INT8": int8, "num_warps": 8}
        sig.update({c: "constexpr" for c in consts})
        names = list(sig)
        attrs = {(names.index(n),): [["tt.divisibility", 16]]
                 for n in ("xs_ptr", "ws_ptr", "bias_ptr", "out_ptr", "K", "stride_om")}
        src = GluonASTSource(fn=g._w8a8_mm_gluon, signature=sig, constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": False})
        ptx = k.asm["ptx"]
        report[ty] = {"mma": sorted(set(re.findall(r"wgmma\\.mma_async\\.sync\\.aligned\\.([\\w.]+)", ptx))),
                      "waits": sorted(set(re.findall(r"wgmma\\.wait_group\\.sync\\.aligned (\\d+)", ptx))),
                      "smem": k.metadata.shared, "cubin_bytes": len(k.asm["cubin"])}
    print(json.dumps(report))
''')


def test_gluon_kernel_compiles_for_sm90_with_mmas_in_flight():
    from lowbit.kernels import gluon_w8a8_mm

    if not gluon_w8a8_mm.available():
        pytest.skip("this Triton has no Gluon")
    report = run_sm90_script(SCRIPT)
    # int8: s8 × s8 → s32 MMAs (N ≤ 224 for 8-bit integers: 128, both for full and half tiles)
    assert report["i8"]["mma"] == ["m64n128k32.s32.s8.s8"], report
    assert report["fp8e4nv"]["mma"] == ["m64n128k32.f32.e4m3.e4m3", "m64n256k32.f32.e4m3.e4m3"], report
    for r in report.values():
        assert "1" in r["waits"], r  # the K loop waits with one step still in flight, for int8 too
        assert r["smem"] <= 227 * 1024 and r["cubin_bytes"] > 0, r  # fits an H100's shared memory


def test_mma_n_for_8_bit_integers_divides_the_tile():
    from lowbit.kernels.gluon_w8a8_mm import mma_n

    assert mma_n(256, int8=True) == 128 and mma_n(128, int8=True) == 128 and mma_n(96, int8=True) == 96
    assert mma_n(256, int8=False) == 256 and mma_n(128, int8=False) == 128


def test_gluon_takes_int8_wide_tiles_with_k_whole(monkeypatch):
    from lowbit.kernels import gluon_w8a8_mm
    from lowbit.kernels import triton_int8_mm as mm

    monkeypatch.setattr(mm, "INTERPRET", False)
    monkeypatch.setitem(mm._GLUON, "broken", False)
    monkeypatch.setattr(gluon_w8a8_mm, "available", lambda: True)
    q8 = torch.zeros(1024, 4096, dtype=torch.int8)
    assert mm.gluon_takes(q8, 14336, mm.WIDE_TILES, 132)
    assert not mm.gluon_takes(q8.view(torch.float8_e4m3fn), 14336, mm.WIDE_TILES, 132)  # E4M3 stays on Triton
    assert not mm.gluon_takes(q8, 14336, mm.NARROW_TILES, 132)
    assert not mm.gluon_takes(torch.zeros(64, 4096, dtype=torch.int8), 14336, mm.SMALL_TILES, 132)
    # down_proj at 256 tokens: 32 wide tiles on 132 SMs, K split: the Triton split-K kernel
    assert not mm.gluon_takes(torch.zeros(256, 14336, dtype=torch.int8), 4096, mm.WIDE_TILES, 132)
    monkeypatch.setitem(mm._GLUON, "broken", True)  # LOWBIT_W8A8_GLUON=0, or a failed build
    assert not mm.gluon_takes(q8, 14336, mm.WIDE_TILES, 132)
    monkeypatch.setattr(mm, "INTERPRET", True)
    monkeypatch.setitem(mm._GLUON, "broken", False)
    assert not mm.gluon_takes(q8, 14336, mm.WIDE_TILES, 132)  # Gluon has no interpreter


def test_a_gluon_build_failure_falls_back_to_triton(monkeypatch):
    from lowbit.kernels import gluon_w8a8_mm
    from lowbit.kernels import triton_int8_mm as mm

    def broken(*args, **kwargs):
        raise RuntimeError("no such builtin")
    monkeypatch.setattr(gluon_w8a8_mm, "w8a8_mm_gluon", broken)
    monkeypatch.setitem(mm._GLUON, "broken", False)
    q = torch.zeros(256, 64, dtype=torch.int8)
    with pytest.warns(RuntimeWarning, match="Gluon int8 GEMM did not build"):
        assert mm._gluon_int8(q, q, None, None, None, None, mm.WIDE_TILES, 132) is None
    assert mm._GLUON["broken"]  # not tried again
