"""The fused online Hadamard kernel (``kernels/triton_hadamard.py``) alone: rows per program, warps
and product operands (bfloat16 or TF32) swept on the H100, against the memory floor.

    PYTHONPATH=src python3 bench/hadamard_sweep.py --out $OUT

Widths 14336 (Llama-3-8B's ``down_proj`` input, 28 ⊗ 16 ⊗ 32) and 1536 (SmolLM2's, 12 ⊗ 128),
M = 1, 256, 4096 bfloat16 rows. Each point is a CUDA graph over enough input copies to stream them
from memory (``kernels.graph_us``), median of 7 replays; the floor is one read and one write of
the rows at 3.0 TB/s. The error column is against the float64 product through the Kronecker
factors. Writes ``<out>/hadamard_kernel_sweep.json`` and ``.md`` and prints the best point per
(width, M, operands) last. What the shipped plan picks (``plan``) is marked.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_us  # noqa: E402
from run_record import record  # noqa: E402

WIDTHS = [14336, 1536]
BATCHES = [1, 256, 4096]
FLOOR_BYTES_PER_US = 3.0e6


def launch(x2, signs, br, warps, bf16):
    from lowbit.kernels import triton_hadamard as th

    n = signs.numel()
    m, mp, p1, p2, _ = th.plan(n)
    A, h1, h2 = th.factor_matrices(n, x2.device)
    y = torch.empty_like(x2)
    th._hadamard_kernel[(triton.cdiv(x2.shape[0], br),)](
        x2, signs, A, h1, h2, y, x2.shape[0], x2.stride(0), y.stride(0), 1.0 / math.sqrt(n),
        M=m, MP=mp, P1=p1, P2=p2, BR=br, DOT_BF16=bf16, num_warps=warps)
    return y


def reference(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    from lowbit.algorithms.hadamard import hadamard_factors, sylvester

    n = signs.numel()
    A, p = hadamard_factors(n)
    X = (x.double() * signs.double() / math.sqrt(n)).reshape(-1, A.shape[0], p)
    return (A.T.to(x.device) @ X @ sylvester(p).to(x.device)).reshape(x.shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    from lowbit.algorithms.hadamard import random_signs
    from lowbit.kernels import triton_hadamard as th

    rows = []
    for n in WIDTHS:
        signs = random_signs(n, 0).cuda()
        m, mp, p1, p2, br0 = th.plan(n)
        tile = mp * p1 * p2
        for M in BATCHES:
            copies = max(1, min(16, (96 << 20) // (M * n * 2)))
            xs = [torch.randn(M, n, device="cuda").bfloat16() for _ in range(copies)]
            ref = reference(xs[0], signs)
            for bf16 in (True, False):
                for br in (1, 2, 4, 8, 16):
                    if br * tile > th.MAX_TILE or br * tile < 1024:
                        continue
                    for warps in (4, 8):
                        y = launch(xs[0], signs, br, warps, bf16)
                        err = float((y.double() - ref).norm() / ref.norm())
                        us = graph_us([lambda x=x: launch(x, signs, br, warps, bf16) for x in xs], 0)
                        rows.append({"n": n, "M": M, "operands": "bf16" if bf16 else "tf32", "rows_per_program": br,
                                     "warps": warps, "us": us, "rel_err": err,
                                     "floor_us": 2 * M * n * 2 / FLOOR_BYTES_PER_US,
                                     "shipped": bf16 and br == br0 and warps == th.num_warps(br * tile)})
                        print(json.dumps(rows[-1]), flush=True)
    lines = ["| width | M | operands | best µs (rows/program, warps) | shipped plan µs | floor µs | rel err |",
             "|---|---|---|---|---|---|---|"]
    for n in WIDTHS:
        for M in BATCHES:
            for ops in ("bf16", "tf32"):
                pts = [r for r in rows if r["n"] == n and r["M"] == M and r["operands"] == ops]
                best = min(pts, key=lambda r: r["us"])
                shipped = next((r for r in pts if r["shipped"]), None)
                shipped_us = f"{shipped['us']:.1f}" if shipped else "—"
                lines.append(f"| {n} | {M} | {ops} | {best['us']:.1f} ({best['rows_per_program']}, {best['warps']}) | "
                             f"{shipped_us} | {best['floor_us']:.1f} | {best['rel_err']:.1e} |")
    table = "\n".join(lines)
    record(a.out, "hadamard_kernel_sweep", "Fused online Hadamard kernel: sweep", "hadamard_sweep.py",
           sys.argv[1:] if argv is None else argv, table, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
