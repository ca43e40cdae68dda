"""Sweep of the W8A8 activation pre-pass (``kernels/triton_act_quant``, per-token int8): block size
and warps for short rows (K = 4096) and long ones (K = 14336, ``down_proj``), for the one-program-
per-row kernel (``quantize_rows``) and the one with fewer programs than rows, each streaming its
rows through registers with the next row's load in flight (``quantize_rows_stream``).

    PYTHONPATH=src python3 bench/act_quant_sweep.py --out $OUT

Each point is a CUDA graph over input copies that stream from memory (``kernels.graph_us``),
median of 7 replays, beside the memory floor (read the bfloat16 row, write the int8 codes, at
3.0 TB/s). Every configuration's codes and scales are compared with the shipped configuration's
(``equal``). Writes ``<out>/act_quant_sweep.json`` and ``.md``; prints the table last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_us  # noqa: E402
from run_record import record  # noqa: E402

SHAPES = [(14336, (256, 512, 1024, 2048, 4096)), (4096, (256, 1024, 4096))]
BLOCKS = (1024, 2048, 4096, 8192, 16384)
WARPS = (4, 8, 16)
STREAM = {14336: [(warps, per_sm) for warps in (8, 16, 32) for per_sm in (1, 2)],
          4096: [(warps, per_sm) for warps in (4, 8, 16) for per_sm in (2, 4, 8)]}


def launch(x, block: int, warps: int):
    from lowbit.kernels import triton_act_quant as aq

    M, K = x.shape
    q = torch.empty(M, K, device=x.device, dtype=torch.int8)
    s = torch.empty(M, 1, device=x.device, dtype=torch.float32)
    aq._quantize_rows[(M,)](x, q, s, s, M, K, x.stride(0), q.stride(0), DIVISOR=127.5, STATIC=False, FP8=False,
                            TINY=aq._TINY, BLOCK=block, ONE_BLOCK=K <= block, num_warps=warps)
    return q, s


LAYERS = {14336: 4096, 4096: 14336}  # K -> N: down_proj and gate/up-shaped layers


def layer_table(rows: list, sms: int) -> list[str]:
    """Per (K, N, M ≥ 1024): bf16 ``F.linear`` beside int8 and E4M3 layers whose input pass is the
    shipped one or the sweep's fastest stream configuration; three alternating rounds, medians."""
    import statistics

    import torch.nn.functional as F

    from lowbit.kernels import triton_act_quant as aq
    from lowbit.kernels.triton_int8_mm import fp8_mm_scaled, int8_mm_scaled

    out = ["| K×N | M | bf16 µs | int8 shipped pass | int8 stream pass | E4M3 shipped pass | E4M3 stream pass | stream config |",
           "|---|---|---|---|---|---|---|---|"]
    for K, N in LAYERS.items():
        for M in sorted({r["M"] for r in rows if r["K"] == K and r["M"] >= 1024}):
            best = min((r for r in rows if r["K"] == K and r["M"] == M and r.get("kernel") == "stream"), key=lambda r: r["us"])
            per_sm, warps = int(best["block"].split("/")[0]), best["warps"]
            x = torch.randn(M, K, device="cuda").bfloat16()
            copies = max(1, min(4, (192 << 20) // (N * K)))
            wb = [(torch.randn(N, K, device="cuda") * 0.02).bfloat16() for _ in range(copies)]
            w8 = [torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8) for _ in range(copies)]
            wf = [(torch.randn(N, K, device="cuda") * 100).to(torch.float8_e4m3fn) for _ in range(copies)]
            ws = torch.rand(N, device="cuda") * 1e-3 + 1e-4

            def layer(fp8, stream, w):
                if stream:
                    q, sx = aq.quantize_rows_stream(x, None, fp8, programs=sms * per_sm, warps=warps)
                else:
                    q, sx = aq.quantize_rows(x, None, fp8)
                return (fp8_mm_scaled if fp8 else int8_mm_scaled)(q, w, sx, ws, None, torch.bfloat16)
            fns = {"bf16": [lambda w=w: F.linear(x, w) for w in wb]}
            for fp8, ww in ((False, w8), (True, wf)):
                for stream in (False, True):
                    fns[fp8, stream] = [lambda w=w, fp8=fp8, stream=stream: layer(fp8, stream, w) for w in ww]
            times = {k: [] for k in fns}
            for _ in range(3):
                for k, f in fns.items():
                    times[k].append(graph_us(f, 100.0))
            med = {k: statistics.median(v) for k, v in times.items()}
            b = med["bf16"]
            cells = [f"{med[k]:.1f} ({b / med[k]:.2f}×)" for k in ((False, False), (False, True), (True, False), (True, True))]
            out.append(f"| {K}×{N} | {M} | {b:.1f} | " + " | ".join(cells) + f" | {per_sm}/SM, {warps} warps |")
            rows.append({"layer": True, "K": K, "N": N, "M": M, "times_us": {str(k): v for k, v in times.items()}})
            print(out[-1], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--layers", action="store_true",
                    help="also time whole W8A8 layers (pre-pass + GEMM, int8 and E4M3) with the shipped "
                         "pre-pass and with the fastest stream configuration, beside bf16, alternating")
    a = ap.parse_args(argv)
    from lowbit.kernels import triton_act_quant as aq

    rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for K, batches in SHAPES:
        for M in batches:
            xs = [torch.randn(M, K, device="cuda").bfloat16() for _ in range(max(1, min(8, (192 << 20) // (M * K * 2))))]
            shipped = aq.quantize_rows(xs[0], None, fp8=False)
            for block in BLOCKS:
                if block > triton.next_power_of_2(K):
                    continue
                for warps in WARPS:
                    q, s = launch(xs[0], block, warps)
                    us = graph_us([lambda x=x: launch(x, block, warps) for x in xs], 0)
                    rows.append({"K": K, "M": M, "kernel": "rows", "block": block, "warps": warps,
                                 "one_pass": K <= block, "us": us, "floor_us": M * K * 3 / 3.0e6,
                                 "equal": bool(torch.equal(q, shipped[0]) and torch.equal(s, shipped[1]))})
            for warps, per_sm in STREAM[K]:
                q, s = aq.quantize_rows_stream(xs[0], None, False, programs=sms * per_sm, warps=warps)
                us = graph_us([lambda x=x: aq.quantize_rows_stream(x, None, False, programs=sms * per_sm, warps=warps)
                               for x in xs], 0)
                rows.append({"K": K, "M": M, "kernel": "stream", "block": f"{per_sm}/SM", "warps": warps,
                             "one_pass": True, "us": us, "floor_us": M * K * 3 / 3.0e6,
                             "equal": bool(torch.equal(q, shipped[0]) and torch.equal(s, shipped[1]))})
            shipped_us = graph_us([lambda x=x: aq.quantize_rows(x, None, fp8=False) for x in xs], 0)
            rows.append({"K": K, "M": M, "kernel": "shipped", "block": None, "warps": None, "us": shipped_us,
                         "floor_us": M * K * 3 / 3.0e6, "equal": True})
            print(rows[-1], flush=True)
    lines = ["| K | M | shipped µs | best µs (kernel, block, warps) | next best | best stream | floor µs | all codes equal |",
             "|---|---|---|---|---|---|---|---|"]
    for K, batches in SHAPES:
        for M in batches:
            pts = sorted((r for r in rows if r["K"] == K and r["M"] == M and r["kernel"] != "shipped"),
                         key=lambda r: r["us"])
            ship = next(r for r in rows if r["K"] == K and r["M"] == M and r["kernel"] == "shipped")
            stream = [r for r in pts if r["kernel"] == "stream"]

            def cell(r):
                return f"{r['us']:.1f} ({r['kernel']}, {r['block']}, {r['warps']})" if r else "–"
            lines.append(f"| {K} | {M} | {ship['us']:.1f} | {cell(pts[0])} | {cell(pts[1])} | "
                         f"{cell(stream[0] if stream else None)} | {ship['floor_us']:.1f} | {all(r['equal'] for r in pts)} |")
    if a.layers:
        lines += ["", *layer_table(rows, sms)]
    table = "\n".join(lines)
    record(a.out, "act_quant_sweep", "W8A8 activation pre-pass: kernel, block and warps", "act_quant_sweep.py",
           sys.argv[1:] if argv is None else argv, table, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
