"""The Gluon W4A16 GEMM (kernels/gluon_w4a16_mm.py): it builds for the H100 in every config the
dispatch launches (16- to 256-row batch tiles, K split or not, code words read ahead or not), with one
K step's MMAs in flight and none serialized by ptxas, and the dispatch offers it where it should.

Gluon has no interpreter, so the kernel's arithmetic is checked on the GPU: ``bench/w4a16_gluon_sweep.py``
compares every config with a float64 dequantize-then-matmul reference (and ``bench/kernels.py``'s
correctness column covers what the dispatch picks). The dequantization is the ``pairs`` kernel's PTX,
whose emulation CI runs (test_kernels_triton.py). Here the kernel is compiled for sm_90 without a
GPU in a fresh process, as in test_kernels_compile_sm90.py.
"""
from __future__ import annotations

import re
import textwrap

import pytest
import torch

from sm90_build import run_sm90_script

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import glob, json, os, re, subprocess, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon import language as gl
    from lowbit.kernels import gluon_w4a16_mm as g
    from lowbit.kernels.triton_weight_only import GLUON, GLUON_SMALL

    BIN = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")

    report = {}
    # every config the dispatch offers (with and without K split and read-ahead)
    for bn, bm, stages, warps, _, split, prefetch, sub in dict.fromkeys(GLUON + sum(GLUON_SMALL.values(), ())):
        wl = repr(gl.NVMMASharedLayout.get_default_for([bn, g.WORDS], gl.int32))
        xl = repr(gl.NVMMASharedLayout.get_default_for([bm, g.BLOCK_K], gl.bfloat16))
        sig = {"w_desc": f"tensordesc<i32[{bn}, {g.WORDS}],{wl}>", "x_desc": f"tensordesc<bf16[{bm}, {g.BLOCK_K}],{xl}>",
               "s_ptr": "*bf16", "z_ptr": "*i32", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "M": "i32", "N": "i32",
               "K": "i32", "stride_sn": "i32", "stride_zn": "i32", "stride_om": "i32"}
        consts = {"PAIRS": g._pair_layout(warps, bn), "HAS_ZERO": True, "HAS_BIAS": True, "STAGES": stages,
                  "GROUP_M": 8, "GROUP_STEPS": 2, "SPLIT_K": split, "PREFETCH": prefetch, "SUB": sub, "num_warps": warps}
        sig.update({c: "constexpr" for c in consts})
        names = list(sig)
        attrs = {(names.index(n),): [["tt.divisibility", 16]]
                 for n in ("s_ptr", "z_ptr", "bias_ptr", "out_ptr", "ws_ptr", "K", "N", "stride_om")}
        src = GluonASTSource(fn=g._w4a16_mm_gluon, signature=sig, constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        ptx = k.asm["ptx"]
        notes, sass = "", ""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.ptx")
            open(path, "w").write(ptx)
            for exe in sorted(glob.glob(os.path.join(BIN, "ptxas*"))):  # ptxas's own report: spills, serialized wgmma
                done = subprocess.run([exe, "-v", "--gpu-name=sm_90a", path, "-o", path + ".o"],
                                      capture_output=True, text=True)
                if done.returncode == 0:
                    notes = done.stdout + done.stderr
                    sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path + ".o"],
                                          capture_output=True, text=True).stdout
                    break
        report[f"n{bn}m{bm}w{warps}s{split}" + ("pf" if prefetch else "") + ("u2" if sub == 2 else "")] = {
            "mma": sorted(set(re.findall(r"wgmma\\.mma_async\\.sync\\.aligned\\.([\\w.]+)", ptx))),
            "waits": sorted(set(re.findall(r"wgmma\\.wait_group\\.sync\\.aligned (\\d+)", ptx))),
            "prmt": ptx.count("prmt.b32"), "fma_bf16x2": ptx.count("fma.rn.bf16x2"),
            "st_shared": ptx.count("st.shared"), "ldmatrix": ptx.count("ldmatrix"),
            "smem": k.metadata.shared, "ptxas": notes, "cubin_bytes": len(k.asm["cubin"]),
            "sass": sass}
    print(json.dumps(report))
''')


def register_operand_hazards(sass: str) -> list[str]:
    """Instructions that write an ``HGMMA``'s A-operand registers while that MMA may still be in
    flight, in the SASS of the K loop (the loop body scanned twice, so a write at the top of the
    next iteration counts against the MMAs the iteration before left running)."""
    lines = [re.sub(r"/\*[^*]*\*/", "", ln).strip().rstrip(" ;") for ln in sass.splitlines()
             if re.match(r"\s*/\*[0-9a-f]{4}\*/", ln)]
    addr = [int(re.match(r"\s*/\*([0-9a-f]{4})\*/", ln).group(1), 16)
            for ln in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]{4}\*/", ln)]
    loops = [(addr.index(int(m.group(1), 16)), i) for i, ln in enumerate(lines)
             if (m := re.search(r"BRA (?:`\()?0x([0-9a-f]+)", ln)) and int(m.group(1), 16) in addr
             and addr.index(int(m.group(1), 16)) < i and "HGMMA" in " ".join(lines[addr.index(int(m.group(1), 16)):i])]
    assert loops, "no K loop with MMAs found in the SASS"
    start, end = loops[0]
    body = lines[start:end + 1]
    in_flight: list[set[int]] = []   # committed groups, oldest first
    group: set[int] = set()
    bad = []
    for ln in body + body:
        op = re.sub(r"^@!?U?P\w+\s+", "", ln)
        if op.startswith("HGMMA"):
            a = re.match(r"HGMMA\S*\s+R\d+,\s+R(\d+),", op)
            if a:
                group |= set(range(int(a.group(1)), int(a.group(1)) + 4))
            if "gsb0" in op:
                in_flight.append(group)
                group = set()
            continue
        wait = re.match(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x(\d+)", op)
        if wait:
            in_flight = in_flight[len(in_flight) - int(wait.group(1), 16):] if int(wait.group(1), 16) else []
            continue
        dest = re.match(r"[A-Z][\w.]*\s+R(\d+)\b", op)
        if dest and not op.startswith(("ST", "RED", "ATOM")) and any(int(dest.group(1)) in g for g in in_flight):
            bad.append(ln)
    return bad


def test_gluon_w4a16_kernel_compiles_for_sm90_with_mmas_in_flight():
    from lowbit.kernels import gluon_w4a16_mm

    if not gluon_w4a16_mm.available():
        pytest.skip("this Triton has no Gluon")
    report = run_sm90_script(SCRIPT)
    assert report["n128m256w8s1pf"]["mma"] == ["m64n256k16.f32.bf16.bf16"], report.keys()
    assert report["n128m128w8s1pf"]["mma"] == ["m64n128k16.f32.bf16.bf16"], report.keys()
    assert report["n128m256w8s4"]["mma"] == ["m64n256k16.f32.bf16.bf16"], report.keys()
    assert report["n128m256w8s2pf"]["mma"] == ["m64n256k16.f32.bf16.bf16"], report.keys()
    assert report["n64m16w4s4pf"]["mma"] == ["m64n16k16.f32.bf16.bf16"], report.keys()
    assert report["n64m16w4s4u2"]["mma"] == ["m64n16k16.f32.bf16.bf16"], report.keys()
    assert report["n64m32w4s4u2"]["mma"] == ["m64n32k16.f32.bf16.bf16"], report.keys()
    assert report["n64m64w4s1u2"]["mma"] == ["m64n64k16.f32.bf16.bf16"], report.keys()
    for r in report.values():
        assert {"1", "2"} & set(r["waits"]), r["waits"]   # one K step's MMAs (one or two sub-steps) stay in flight
        assert r["prmt"] > 0 and r["fma_bf16x2"] > 0      # the packed dequantization reached the PTX
        assert r["st_shared"] == 0 and r["ldmatrix"] == 0  # the tile is the MMA's operand as built
        assert r["smem"] <= 227 * 1024 and r["cubin_bytes"] > 0
        if r["ptxas"]:
            assert "Performance Loss" not in r["ptxas"], r["ptxas"]  # no serialized wgmma
            assert "0 bytes spill stores" in r["ptxas"], r["ptxas"]
        if r["sass"]:  # the registers an MMA reads are not rewritten while it runs
            assert register_operand_hazards(r["sass"]) == []


def test_dispatch_offers_gluon_to_4_bit_layers_from_2_rows():
    from lowbit.kernels import gluon_w4a16_mm
    from lowbit.kernels.triton_weight_only import GLUON, GLUON_SMALL, candidates

    if not gluon_w4a16_mm.available():
        pytest.skip("this Triton has no Gluon")

    def offered(m, bits=4):
        return [(c.block_n, c.block_m, c.num_stages, c.num_warps, c.group_m, c.split_k, c.prefetch, c.sub)
                for c in candidates(m, bits) if c.path == "gluon"]

    assert offered(1) == []                                   # batch 1: the half2 GEMV
    for m, key in ((2, 16), (3, 16), (16, 16), (17, 32), (32, 32), (33, 64), (64, 64)):
        assert offered(m) == list(GLUON_SMALL[key]), m
    for m in (65, 128, 256, 1000, 4096):                      # the batch buckets from 128
        assert offered(m) == list(GLUON), m
    for m in (2, 64, 4096):
        assert offered(m, bits=8) == []


def test_gluon_path_refuses_what_it_cannot_run():
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats import FormatSpec
    from lowbit.kernels import gluon_w4a16_mm as g
    from lowbit.kernels.triton_layout import WeightLayout
    from lowbit.kernels.triton_weight_only import KernelConfig, run_config
    from lowbit.modules import QuantLinear

    codes = torch.randint(0, 16, (128, 256), dtype=torch.uint8)
    scale = torch.rand(128, 2).bfloat16() * 0.01 + 0.001
    zero = torch.randint(0, 16, (128, 2), dtype=torch.int32)
    layer = QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, FormatSpec(bits=4, sym=False, group_size=128)))
    layout = WeightLayout.of(layer)
    x = torch.randn(4, 256).bfloat16()
    assert g.gluon_w4_fits(layout, x)
    assert not g.gluon_w4_fits(layout, x.half())              # float16 inputs: the Triton kernels
    assert not g.gluon_w4_fits(layout, torch.randn(256, 4).bfloat16().t())  # columns not contiguous
    with pytest.raises(ValueError, match="Hopper GPUs only"):  # no interpreter: never on the CPU
        run_config(x, layout, None, KernelConfig("gluon", block_n=128, block_m=128, block_k=64, num_warps=4))
    with pytest.raises(ValueError, match="weight rows"):
        g.w4a16_mm_gluon(x, layout, None, block_n=96)
    g64 = QuantLinear.from_quantized(QuantizedWeight(codes, torch.rand(128, 8).bfloat16(),
                                                     torch.zeros(128, 8, dtype=torch.int32),
                                                     FormatSpec(bits=4, sym=False, group_size=32)))
    assert not g.gluon_w4_fits(WeightLayout.of(g64), x)       # groups smaller than a K step
    narrow = QuantLinear.from_quantized(QuantizedWeight(codes[:96], scale[:96], zero[:96],
                                                        FormatSpec(bits=4, sym=False, group_size=128)))
    assert not g.gluon_w4_fits(WeightLayout.of(narrow), x)    # a partial 128-row weight tile


def test_gluon_split_and_sub_step_checks():
    """The host refuses, before any launch, K splits that would leave a split empty and two
    sub-steps per step where K or the groups are not whole 128s (or with read-ahead)."""
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats import FormatSpec
    from lowbit.kernels import gluon_w4a16_mm as g
    from lowbit.kernels.triton_layout import WeightLayout
    from lowbit.modules import QuantLinear

    # 224 steps of 64 (14336 inputs): 3 splits of 75, 75, 74; 64 steps: at most 64 splits
    assert g.split_ok(14336, 3) and g.split_ok(14336, 4) and g.split_ok(4096, 64)
    assert not g.split_ok(4096, 65) and not g.split_ok(4096, 0)
    assert g.split_ok(64 * 10, 4)             # runs of 3: 3 + 3 + 3 + 1
    assert not g.split_ok(64 * 9, 4)          # runs of 3: 3 + 3 + 3 + 0, the last split empty
    assert g.split_ok(128 * 8, 4, sub=2) and not g.split_ok(128 * 3, 4, sub=2)

    def layer(k, group):
        codes = torch.randint(0, 16, (128, k), dtype=torch.uint8)
        groups = k // group if group > 0 else 1
        return WeightLayout.of(QuantLinear.from_quantized(QuantizedWeight(
            codes, torch.rand(128, groups).bfloat16(), torch.randint(0, 16, (128, groups), dtype=torch.int32),
            FormatSpec(bits=4, sym=False, group_size=group))))

    x = torch.randn(4, 192).bfloat16()
    with pytest.raises(ValueError, match="whole multiples of 128"):
        g.w4a16_mm_gluon(x, layer(192, 64), None, block_n=64, block_m=16, warps=4, sub=2)   # K = 3·64
    x = torch.randn(4, 256).bfloat16()
    with pytest.raises(ValueError, match="whole multiples of 128"):
        g.w4a16_mm_gluon(x, layer(256, 64), None, block_n=64, block_m=16, warps=4, sub=2)   # groups of 64
    with pytest.raises(ValueError, match="with prefetch"):
        g.w4a16_mm_gluon(x, layer(256, 128), None, block_n=64, block_m=16, warps=4, sub=2, prefetch=True)
    with pytest.raises(ValueError, match="cannot be split 3 ways"):
        g.w4a16_mm_gluon(x, layer(256, 128), None, block_n=64, block_m=16, warps=4, split_k=3, sub=2)
    with pytest.raises(ValueError, match="batch rows"):
        g.w4a16_mm_gluon(x, layer(256, 128), None, block_n=64, block_m=8, warps=4)
    with pytest.raises(ValueError, match="2 stages"):
        g.w4a16_mm_gluon(x, layer(256, 128), None, block_n=64, block_m=16, warps=4, stages=2, prefetch=True)


def test_gluon_kernel_runs_on_hopper_only(monkeypatch):
    from types import SimpleNamespace

    from lowbit.kernels import gluon_w4a16_mm as g

    gpu = SimpleNamespace(is_cuda=True, device="cuda:0")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for major, ok in ((8, False), (9, True), (10, False), (12, False)):  # A100, H100, B200, RTX 50
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert g.runs_on(gpu) is ok
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not g.runs_on(gpu)
    assert not g.runs_on(torch.zeros(1))
