"""The kernels with inline PTX (half2 GEMV, pairs, frag, int8 GEMV) and the W8A8 kernels launched
with PDL compile for the H100 (sm_90), no GPU.

CI has no GPU, and the interpreter runs an emulation instead of the inline assembly, so a PTX
typo or a Triton API change would only show on the GPU machine. Triton compiles for a named
target without a device (its bundled ``ptxas`` assembles the PTX), so this test builds the kernels
for sm_90 as the dispatch launches them and checks their packed instructions (``lop3``/``prmt``
with ``fma.rn.f16x2``/``bf16x2``, ``dp4a``) reached the compiled code. It runs in a fresh process: the kernel tests switch the
whole pytest process to the interpreter, under which ``@triton.jit`` functions cannot be compiled.
"""
from __future__ import annotations

import textwrap

import pytest

from sm90_build import run_sm90_script

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from lowbit.kernels import triton_gemv_half2 as h

    names = ["xh_ptr", "xe_ptr", "x_ptr", "wq_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "ws_ptr",
             "cnt_ptr", "M", "N", "K", "KW", "KC", "group", "stride_xm", "stride_xk", "stride_wn",
             "stride_sn", "stride_zn"]
    types = ["*i32", "*fp32", "*bf16", "*i32", "*bf16", "*i32", "*bf16", "*bf16", "*fp32", "*i32"]
    types += ["i32"] * (len(names) - len(types))
    aligned = {"xh_ptr", "xe_ptr", "x_ptr", "wq_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr",
               "ws_ptr", "cnt_ptr", "K", "KW", "stride_wn"}
    report = {}
    for bm, fuse in ((1, True), (2, True), (4, False)):
        sig = dict(zip(names, types))
        consts = dict(BM=bm, BN=32 if bm == 1 else 16, NS=2, SW=16, UNROLL=2, SPLIT_K=2,
                      HAS_ZERO=True, HAS_BIAS=True, USE_PTX=True, XCHUNK=128, FUSE_X=fuse,
                      SELF_REDUCE=True, PDL=True)
        sig.update({c: "constexpr" for c in consts})
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        src = triton.compiler.ASTSource(fn=h._gemv_half2_kernel, signature=sig,
                                        constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 1, "num_stages": 1})
        ptx = k.asm["ptx"]
        report[f"bm{bm}"] = {"lop3": ptx.count("lop3.b32"), "fma_f16x2": ptx.count("fma.rn.f16x2"),
                             "pdl": ptx.count("griddepcontrol"),
                             "cubin_bytes": len(k.asm["cubin"])}

    from lowbit.kernels import triton_mma_pairs as p
    names = ["x_ptr", "wq_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "ws_ptr", "M", "N", "K", "KW",
             "group", "stride_xm", "stride_xk", "stride_wn", "stride_sn", "stride_zn", "stride_om"]
    for dt in ("bf16", "fp16"):
        types = [f"*{dt}", "*i32", f"*{dt}", "*i32", f"*{dt}", f"*{dt}", "*fp32"]
        sig = dict(zip(names, types + ["i32"] * (len(names) - len(types))))
        consts = dict(BN=128, BM=16, BK=128, SPLIT_K=2, HAS_ZERO=True, HAS_BIAS=True, USE_PTX=True)
        sig.update({c: "constexpr" for c in consts})
        aligned = {"x_ptr", "wq_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "ws_ptr", "K", "KW",
                   "stride_xm", "stride_wn", "stride_om"}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        src = triton.compiler.ASTSource(fn=p._mma_pairs_kernel, signature=sig, constexprs=consts,
                                        attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 8, "num_stages": 3})
        ptx = k.asm["ptx"]
        packed = "bf16x2" if dt == "bf16" else "f16x2"
        report[f"pairs_{dt}"] = {"lop3": ptx.count("lop3.b32"), "prmt": ptx.count("prmt.b32"),
                                 "fma_packed": ptx.count(f"fma.rn.{packed}"),
                                 "cubin_bytes": len(k.asm["cubin"])}

    import re
    from lowbit.kernels import triton_mma_frag as f
    names = ["x_ptr", "wf_ptr", "meta_ptr", "b_ptr", "out_ptr", "ws_ptr", "cnt_ptr", "M", "N", "K",
             "KBLK", "GROUPS", "stride_xm", "stride_xk", "stride_om"]
    types = ["*bf16", "*i32", "*i32", "*bf16", "*bf16", "*fp32", "*i32"]
    sig = dict(zip(names, types + ["i32"] * (len(names) - len(types))))
    consts = dict(BN=64, BM=16, KBT=1, BLOCKS_PER_GROUP=2, SPLIT_K=4, HAS_BIAS=True, USE_PTX=True,
                  SELF_REDUCE=True)
    sig.update({c: "constexpr" for c in consts})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names[:7] + ["K", "KBLK"]}
    src = triton.compiler.ASTSource(fn=f._mma_frag_kernel, signature=sig, constexprs=consts,
                                    attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "num_stages": 4})
    ptx = k.asm["ptx"]
    # the dequantized tile is the tensor-core instruction's register operand (no shared memory)
    reg_operand = re.search(r"warp_group_dot \S+, .*: tensor<\d+x\d+xbf16, "
                            r"#ttg\.dot_op<\{opIdx = 0", k.asm["ttgir"]) is not None
    report["frag"] = {"lop3": ptx.count("lop3.b32"), "prmt": ptx.count("prmt.b32"),
                      "fma_packed": ptx.count("fma.rn.bf16x2"), "wgmma": ptx.count("wgmma.mma_async"),
                      "register_operand": reg_operand, "cubin_bytes": len(k.asm["cubin"])}

    from lowbit.kernels import triton_int8_gemv as g
    names = ["x_ptr", "w_ptr", "sw_ptr", "static_ptr", "b_ptr", "out_ptr", "ws_ptr", "cnt_ptr", "M",
             "N", "K", "KW", "stride_xm"]
    types = ["*bf16", "*i32", "*fp32", "*fp32", "*bf16", "*bf16", "*i32", "*i32"]
    sig = dict(zip(names, types + ["i32"] * (len(names) - len(types))))
    consts = dict(BM=2, BN=32, BK=1024, SPLIT_K=2, XBLOCK=1024, STATIC=False, HAS_BIAS=True,
                  USE_PTX=True)
    sig.update({c: "constexpr" for c in consts})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names[:8] + ["K", "KW"]}
    src = triton.compiler.ASTSource(fn=g._int8_gemv_kernel, signature=sig, constexprs=consts,
                                    attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    report["int8_gemv"] = {"dp4a": k.asm["ptx"].count("dp4a.s32.s32"),
                           "cubin_bytes": len(k.asm["cubin"])}

    # the W8A8 input pass and the TMA GEMM after it, launched with PDL: the grid dependency
    # control reaches the compiled code (the pass: wait, then let the GEMM launch; the GEMM: wait)
    from lowbit.kernels import triton_act_quant as aq, triton_int8_mm as mm
    import triton.language as tl
    sig = {"x_ptr": "*bf16", "q_ptr": "*i8", "s_ptr": "*fp32", "static_ptr": "*fp32", "M": "i32", "K": "i32",
           "stride_x": "i32", "stride_q": "i32"}
    consts = dict(DIVISOR=127.5, STATIC=False, FP8=False, TINY=aq._TINY, BLOCK=16384, ONE_BLOCK=True, PDL=True)
    sig.update({c: "constexpr" for c in consts})
    k = triton.compile(triton.compiler.ASTSource(fn=aq._quantize_rows, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    report["act_quant_pdl"] = {"wait": k.asm["ptx"].count("griddepcontrol.wait"),
                               "launch": k.asm["ptx"].count("griddepcontrol.launch_dependents"),
                               "cubin_bytes": len(k.asm["cubin"])}
    sig = {"q_desc": "tensordesc<i8[128, 128]>", "w_desc": "tensordesc<i8[256, 128]>",
           "w_half_desc": "tensordesc<i8[128, 128]>", "xs_ptr": "*fp32", "ws_ptr": "*bf16", "bias_ptr": "*fp32",
           "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "N_MAIN": "i32", "stride_om": "i32"}
    consts = dict(HAS_BIAS=False, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_TAIL=True,
                  ACC=tl.int32, PDL=True)
    sig.update({c: "constexpr" for c in consts})
    k = triton.compile(triton.compiler.ASTSource(fn=mm._int8_mm_tma, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 4})
    report["int8_mm_pdl"] = {"wait": k.asm["ptx"].count("griddepcontrol.wait"), "launch": 0,
                             "cubin_bytes": len(k.asm["cubin"])}
    print(json.dumps(report))
''')


def test_inline_ptx_kernels_compile_for_sm90_with_their_packed_instructions():
    report = run_sm90_script(SCRIPT)
    for name, r in report.items():  # the inline assembly is in the compiled kernel
        if name == "int8_gemv":
            assert r["dp4a"] >= 1, (name, r)
        elif name.endswith("_pdl"):
            assert r["wait"] >= 1 and r["launch"] >= (1 if name == "act_quant_pdl" else 0), (name, r)
        elif name.startswith("pairs"):
            assert r["lop3"] >= 4 and r["prmt"] >= 4 and r["fma_packed"] >= 8, (name, r)
        elif name == "frag":
            assert r["lop3"] >= 4 and r["prmt"] >= 4 and r["fma_packed"] >= 8, (name, r)
            assert r["wgmma"] >= 1 and r["register_operand"], (name, r)
        else:  # with programmatic dependent launch: the trigger and the wait
            assert r["lop3"] >= 4 and r["fma_f16x2"] >= 3 and r["pdl"] >= 2, (name, r)
        assert r["cubin_bytes"] > 0, (name, r)
