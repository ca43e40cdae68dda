"""Tile sweep of lowbit's fused W8A8 int8 GEMM (kernels/triton_int8_mm.py) on one GPU: which
launch shapes to use (``WIDE_TILES``, ``NARROW_TILES`` and when to split K; issue 8).

    PYTHONPATH=src python3 bench/w8a8_tile_sweep.py --out $OUT
    PYTHONPATH=src python3 bench/w8a8_tile_sweep.py --shapes 4096x14336 --batches 256,1024
    PYTHONPATH=src python3 bench/w8a8_tile_sweep.py --fp8 ...   # E4M3 codes through the same kernels

Conditions are bench/w8a8_kernels.py's: CUDA graphs, weights rotated over enough copies that
they stream from HBM, median of 7 replays. For each weight shape and M it times bf16
``F.linear``, the activation-quantization pre-pass alone, and for every candidate (TMA candidates split K across programs where ``split_k_for`` says so;
the last candidate is the shipped tiles with K never split) the GEMM alone
(``gemm``) and pre-pass + GEMM (``layer``, what the W8A8 layer runs). Each candidate is first
checked against ``torch._int_mm`` (exact int32) followed by the same float32 epilogue: the
outputs must be equal. A candidate that fails to compile or to match is reported, not timed.
Writes ``<out>/w8a8_tile_sweep.json``, ``<out>/w8a8_tile_winners.json`` (per M bucket, the
candidate with the best worst-case layer speedup) and prints, per shape and M, the candidates by
layer time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_us  # noqa: E402
from run_record import command_line, utc_now  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

L2_ROTATE_BYTES = 192 << 20


def candidates():
    from lowbit.kernels.triton_int8_mm import Tiles

    tma = [Tiles(128, 256, 128, 4, 8), Tiles(128, 256, 128, 3, 8), Tiles(128, 256, 64, 6, 8),
           Tiles(128, 256, 128, 4, 8, split_tail=True), Tiles(128, 256, 128, 3, 8, split_tail=True),
           Tiles(128, 128, 128, 4, 8), Tiles(128, 128, 128, 5, 4),
           Tiles(64, 256, 128, 4, 4), Tiles(64, 128, 128, 6, 4), Tiles(256, 128, 128, 3, 8),
           Tiles(128, 256, 128, 4, 8, persistent=True), Tiles(128, 256, 128, 3, 8, persistent=True),
           Tiles(128, 128, 128, 4, 8, persistent=True), Tiles(128, 128, 128, 5, 8, persistent=True),
           Tiles(128, 256, 128, 4, 8, group_m=16, persistent=True), Tiles(256, 128, 128, 3, 8, persistent=True)]
    out = [("ptr 128x256x128 s4 w8", ("ptr", dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8,
                                                     num_stages=4, num_warps=8)))]
    for t in tma:
        name = (f"tma {t.block_m}x{t.block_n}x{t.block_k} s{t.stages} w{t.warps}"
                + (" tail" if t.split_tail else "") + (" pers" if t.persistent else "")
                + (f" g{t.group_m}" if t.group_m != 8 else ""))
        out.append((name, ("tma", t)))
    # the shipped tiles with K never split: against the line above, what split_k_for buys
    out.append(("tma 128x256x128 s4 w8 tail nosplit", ("tma-nosplit", Tiles(128, 256, 128, 4, 8, split_tail=True))))
    # small batches: one warpgroup's 64-row tiles, against the _int_mm path the layer takes there
    for t in (Tiles(64, 128, 128, 4, 4), Tiles(64, 256, 128, 4, 4), Tiles(64, 64, 128, 6, 4)):
        out.append((f"tma {t.block_m}x{t.block_n}x{t.block_k} s{t.stages} w{t.warps}", ("tma", t)))
    out.append(("_int_mm + epilogue", ("intmm", None)))
    # the tail rule: split whenever there is a partial wave (the rule before 2026-11-24 21:30)
    out.append(("tma 128x256x128 s4 w8 tail always", ("tma-alltail", Tiles(128, 256, 128, 4, 8, split_tail=True))))
    # Triton issues an int32-accumulating wgmma synchronously (it waits for each K step's MMAs
    # before the next; only float32 accumulators are pipelined), so the tensor cores idle between
    # K steps: two programs per SM (smem and registers for two) or longer K steps hide that gap
    for t in (Tiles(128, 128, 128, 3, 4), Tiles(128, 128, 128, 3, 8), Tiles(128, 128, 128, 2, 4),
              Tiles(128, 256, 256, 2, 8, split_tail=True), Tiles(64, 256, 128, 3, 4), Tiles(128, 128, 64, 4, 4),
              Tiles(128, 128, 64, 6, 4)):
        out.append((f"tma {t.block_m}x{t.block_n}x{t.block_k} s{t.stages} w{t.warps}" + (" tail" if t.split_tail else ""),
                    ("tma", t)))
    # the Gluon kernel (kernels/gluon_w8a8_mm.py): the same tiles with one K step's MMAs in flight
    for t in (Tiles(128, 256, 128, 4, 8), Tiles(128, 256, 128, 3, 8), Tiles(128, 256, 64, 6, 8),
              Tiles(128, 128, 128, 4, 4), Tiles(128, 256, 128, 4, 8, group_m=16),
              Tiles(128, 256, 128, 4, 8, split_tail=True)):
        out.append((f"gluon {t.block_m}x{t.block_n}x{t.block_k} s{t.stages} w{t.warps}"
                    + (f" g{t.group_m}" if t.group_m != 8 else "") + (" tail" if t.split_tail else ""), ("gluon", t)))
    out.append(("shipped int8_mm_scaled", ("shipped", None)))  # whatever the layer's dispatch picks
    return out


def gemm_fn(kind, cfg):
    from lowbit.kernels import triton_int8_mm as mm

    def run(q, w, xs, ws):
        out = torch.empty(q.shape[0], w.shape[0], device=q.device, dtype=torch.bfloat16)
        if kind == "ptr":
            return mm.int8_mm_ptr(q, w, xs, ws, None, out, cfg)
        if kind == "tma-nosplit":  # K never split (the launch before split_k_for)
            return mm.int8_mm_tma(q, w, xs, ws, None, out, cfg, split_k=1)
        if kind == "tma-alltail":  # the tail split whenever there is a partial wave (before 2026-11-24 21:30)
            n_m, n_n = -(-q.shape[0] // cfg.block_m), -(-w.shape[0] // cfg.block_n)
            sms = torch.cuda.get_device_properties(q.device).multi_processor_count
            waves = n_m * n_n // sms
            main = w.shape[0] if waves == 0 or n_m * n_n % sms == 0 else min(w.shape[0], waves * sms // n_m * cfg.block_n)
            return mm.int8_mm_tma(q, w, xs, ws, None, out, cfg, main=main)
        if kind == "gluon":
            from lowbit.kernels.gluon_w8a8_mm import w8a8_mm_gluon

            main = mm.main_columns(q.shape[0], w.shape[0], cfg, mm.sm_count(q.device))
            return w8a8_mm_gluon(q, w, xs, ws, None, out, cfg.block_m, cfg.block_n, cfg.block_k, cfg.stages,
                                 cfg.warps, cfg.group_m, main=main)
        if kind == "shipped":
            scaled = mm.fp8_mm_scaled if q.dtype == torch.float8_e4m3fn else mm.int8_mm_scaled
            return scaled(q, w, xs, ws, None, torch.bfloat16)
        if kind == "intmm":  # the layer's path below FUSED_MIN_M: cuBLASLt int8 GEMM, Triton epilogue
            from lowbit.kernels.triton_act_quant import scale_int32

            m = q.shape[0]
            qp = q if m > 16 else F.pad(q, (0, 0, 0, 17 - m))
            acc = torch._int_mm(qp, w.t())[:m]
            return scale_int32(acc, xs.reshape(-1, 1), ws, None, torch.bfloat16)
        return mm.int8_mm_tma(q, w, xs, ws, None, out, cfg)
    return run


def reference(q, w, xs, ws):
    if q.dtype == torch.float8_e4m3fn:  # cuBLAS with its promoted (precise) accumulation
        return torch._scaled_mm(q, w.t(), scale_a=xs.reshape(-1, 1).contiguous(), scale_b=ws.reshape(1, -1).float(),
                                out_dtype=torch.bfloat16)
    m = q.shape[0]  # torch._int_mm needs more than 16 rows: zero rows padded, then dropped
    acc = torch._int_mm(q if m > 16 else F.pad(q, (0, 0, 0, 17 - m)), w.t())[:m]
    return (acc.float() * xs[:, None] * ws[None, :]).to(torch.bfloat16)


def winners(rows, cands) -> dict:
    """Per M bucket (next power of two), the TMA candidate whose worst layer speedup over the
    swept weight shapes is best (a candidate must have run on every shape at that M)."""
    from lowbit.kernels.triton_int8_mm import _m_bucket

    by_name = dict(cands)
    shapes = {(r["K"], r["N"]) for r in rows}
    best = {}
    for M in sorted({r["M"] for r in rows}):
        worst = {}
        for r in rows:
            if r["M"] == M and "layer_speedup" in r and by_name[r["candidate"]][0] == "tma":
                worst.setdefault(r["candidate"], []).append(r["layer_speedup"])
        full = {c: min(v) for c, v in worst.items() if len(v) == len(shapes)}
        if full:
            name = max(full, key=full.get)
            best[_m_bucket(M)] = {"candidate": name, "worst_speedup": full[name], **vars(by_name[name][1])}
    return best


FP8_KINDS = ("tma", "tma-nosplit", "tma-alltail", "gluon", "shipped")  # the kernels that take E4M3 codes too


@torch.no_grad()
def sweep_shape(K, N, batches, cands, rows, log, fp8=False):
    from lowbit.kernels.triton_act_quant import quantize_rows

    dev = torch.device("cuda")
    copies = max(1, min(4, math.ceil(L2_ROTATE_BYTES / (K * N))))
    g = torch.Generator(device=dev).manual_seed(K + N)
    if fp8:  # E4M3 codes of Gaussian weights scaled per row to the format's range
        w8 = []
        for _ in range(copies):
            w = torch.randn(N, K, generator=g, device=dev)
            w8.append((w * (448.0 / w.abs().amax(1, keepdim=True))).to(torch.float8_e4m3fn))
        cands = [c for c in cands if c[1][0] in FP8_KINDS]
    else:
        w8 = [torch.randint(-127, 128, (N, K), generator=g, device=dev, dtype=torch.int8) for _ in range(copies)]
    ws = [torch.rand(N, generator=g, device=dev) * 1e-3 + 1e-4 for _ in range(copies)]
    wb = [(torch.randn(N, K, generator=g, device=dev) * 0.02).bfloat16() for _ in range(copies)]
    for M in batches:
        x = torch.randn(M, K, generator=g, device=dev).bfloat16()
        base = {"K": K, "N": N, "M": M, "codes": "e4m3" if fp8 else "int8"}
        bf16 = graph_us([lambda w=w: F.linear(x, w) for w in wb], 50.0)
        quant = graph_us([lambda: quantize_rows(x, None, fp8)], 5.0)
        q, xs = quantize_rows(x, None, fp8)
        xs = xs.reshape(-1)
        ref = reference(q, w8[0], xs, ws[0])
        log(f"{K}x{N} M={M}: bf16 {bf16:.1f} us, quantize_rows {quant:.1f} us")
        for name, (kind, cfg) in cands:
            row = {**base, "candidate": name, "bf16_us": bf16, "quant_us": quant}
            fn = gemm_fn(kind, cfg)
            try:
                y = fn(q, w8[0], xs, ws[0])
                torch.cuda.synchronize()
                # E4M3: the tensor cores' fast accumulation differs from cuBLAS's by ~3e-3 relative
                row["equal"] = bool(torch.equal(y, ref)) if not fp8 else bool(
                    (y.float() - ref.float()).norm() <= 1e-2 * ref.float().norm())
                row["max_abs_diff"] = float((y.float() - ref.float()).abs().max())
                if row["equal"]:
                    row["gemm_us"] = graph_us([lambda w=w, s=s: fn(q, w, xs, s) for w, s in zip(w8, ws)], 50.0)

                    def layer(w, s):
                        qq, ss = quantize_rows(x, None, fp8)
                        return fn(qq, w, ss.reshape(-1), s)
                    row["layer_us"] = graph_us([lambda w=w, s=s: layer(w, s) for w, s in zip(w8, ws)], 50.0)
                    row["layer_speedup"] = bf16 / row["layer_us"]
            except Exception as e:  # a candidate this Triton cannot build: report it, go on
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                if "CUDA error" in str(e) or "illegal" in str(e).lower():
                    raise
            rows.append(row)
            log(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                            if k not in base and k not in ("bf16_us", "quant_us")}))
    del w8, ws, wb
    torch.cuda.empty_cache()


def summary(rows, top):
    lines = ["| K×N | M | bf16 µs | quant µs | candidate | gemm µs | layer µs | ×bf16 |", "|---|---|---|---|---|---|---|---|"]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["K"], r["N"], r["M"]), []).append(r)
    for (K, N, M), rs in keyed.items():
        ok = sorted([r for r in rs if "layer_us" in r], key=lambda r: r["layer_us"])
        for r in ok[:top]:
            lines.append(f"| {K}×{N} | {M} | {r['bf16_us']:.1f} | {r['quant_us']:.1f} | {r['candidate']} | "
                         f"{r['gemm_us']:.1f} | {r['layer_us']:.1f} | {r['layer_speedup']:.2f}× |")
        bad = [r["candidate"] + (" (error)" if "error" in r else " (not equal)") for r in rs if "layer_us" not in r]
        if bad:
            lines.append(f"| {K}×{N} | {M} | | | skipped: {', '.join(bad)} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--shapes", default="4096x14336,8192x28672")
    ap.add_argument("--batches", default="256,1024,4096")
    ap.add_argument("--top", type=int, default=5, help="candidates per (shape, M) in the printed table")
    ap.add_argument("--pick", default=None, help="comma-separated indices into the candidate list (default: all)")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds after which no new shape starts")
    ap.add_argument("--fp8", action="store_true", help="E4M3 codes instead of int8 (the TMA, Gluon and shipped "
                    "kernels; outputs checked against torch._scaled_mm within 1e-2 relative)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    a.out.mkdir(parents=True, exist_ok=True)
    logf = open(a.out / "w8a8_tile_sweep.log", "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()
    import triton
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    cands = candidates()
    if a.pick:
        cands = [cands[int(i)] for i in a.pick.split(",")]
    rows: list[dict] = []
    t0 = time.time()
    for shape in a.shapes.split(","):
        if time.time() - t0 > a.deadline:
            log(f"deadline: {shape} not swept")
            break
        K, N = (int(v) for v in shape.split("x"))
        try:
            sweep_shape(K, N, [int(v) for v in a.batches.split(",")], cands, rows, log, fp8=a.fp8)
        except Exception:
            log(traceback.format_exc()[-2000:])
        (a.out / "w8a8_tile_sweep.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton_version(),
             "date": utc_now(),
             "command": command_line("PYTHONPATH=src python3 bench/w8a8_tile_sweep.py",
                                     sys.argv[1:] if argv is None else argv),
             "timing": "graph", "rows": rows}, indent=1) + "\n")
    log(f"sweep took {time.time() - t0:.0f} s")
    best = winners(rows, cands)
    (a.out / "w8a8_tile_winners.json").write_text(json.dumps(best, indent=1) + "\n")
    log("winners per M bucket: " + json.dumps({b: w["candidate"] for b, w in best.items()}))
    log(summary(rows, a.top))
    return 0


def triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
