"""Sweep of the W8A8 activation pre-pass (``kernels/triton_act_quant.quantize_rows``, per-token
int8): block size and warps for short rows (K = 4096) and long ones (K = 14336, ``down_proj``).
Two other designs were measured with it and dropped (``bench/results/act_quant_sweep-chunked.md``,
``act_quant_sweep-stream.md``): chunk programs in two launches, and fewer programs than rows
streaming their rows through registers.

    PYTHONPATH=src python3 bench/act_quant_sweep.py --out $OUT

Each point is a CUDA graph over input copies that stream from memory (``kernels.graph_us``),
median of 7 replays, beside the memory floor (read the bfloat16 row, write the int8 codes, at
3.0 TB/s). Every configuration's codes and scales are compared with the shipped configuration's, and those
with PyTorch's (kernels/activations.py) (``equal``). Writes ``<out>/act_quant_sweep.json`` and ``.md``; prints the table last.
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

SHAPES = [(14336, (256, 512, 1024, 2048, 4096)), (8192, (256, 1024, 4096)), (4096, (256, 1024, 4096))]
BLOCKS = (1024, 2048, 4096, 8192, 16384)
WARPS = (4, 8, 16)


def launch(x, block: int, warps: int):
    from lowbit.kernels import triton_act_quant as aq

    M, K = x.shape
    q = torch.empty(M, K, device=x.device, dtype=torch.int8)
    s = torch.empty(M, 1, device=x.device, dtype=torch.float32)
    aq._quantize_rows[(M,)](x, q, s, s, M, K, x.stride(0), q.stride(0), DIVISOR=127.5, STATIC=False, FP8=False,
                            TINY=aq._TINY, BLOCK=block, ONE_BLOCK=K <= block, num_warps=warps)
    return q, s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    from lowbit.kernels import triton_act_quant as aq
    from lowbit.kernels.activations import int8_per_token

    rows = []
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
            shipped_us = graph_us([lambda x=x: aq.quantize_rows(x, None, fp8=False) for x in xs], 0)
            ref = int8_per_token(xs[0])  # PyTorch's arithmetic (the CPU path)
            rows.append({"K": K, "M": M, "kernel": "shipped", "block": None, "warps": None, "us": shipped_us,
                         "floor_us": M * K * 3 / 3.0e6,
                         "equal": bool(torch.equal(shipped[0], ref[0]) and torch.equal(shipped[1], ref[1]))})
            print(rows[-1], flush=True)
    lines = ["| K | M | shipped µs | best µs (block, warps) | next best | floor µs | all codes equal |",
             "|---|---|---|---|---|---|---|"]
    for K, batches in SHAPES:
        for M in batches:
            pts = sorted((r for r in rows if r["K"] == K and r["M"] == M),
                         key=lambda r: r["us"])
            ship = next(r for r in rows if r["K"] == K and r["M"] == M and r["kernel"] == "shipped")

            def cell(r):
                return f"{r['us']:.1f} " + ("(shipped)" if r["kernel"] == "shipped" else f"({r['block']}, {r['warps']})")
            lines.append(f"| {K} | {M} | {ship['us']:.1f} | {cell(pts[0])} | {cell(pts[1])} | "
                         f"{ship['floor_us']:.1f} | {all(r['equal'] for r in pts)} |")
    table = "\n".join(lines)
    record(a.out, "act_quant_sweep", "W8A8 activation pre-pass: block and warps", "act_quant_sweep.py",
           sys.argv[1:] if argv is None else argv, table, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
