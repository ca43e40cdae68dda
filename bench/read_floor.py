"""How fast can any kernel stream a 4-bit layer's bytes? A pure-read ceiling for the batch-1 bar.

    PYTHONPATH=src python3 bench/read_floor.py --out $OUT

The issue-6 bar for batch 1 is 85% of the "floor": the 4-bit layer's bytes read once at the
measured copy bandwidth. This times kernels that only read those bytes (each program XOR-reduces
its contiguous chunk and writes one word) under a CUDA graph cycling through copies larger than L2,
exactly as ``bench/kernels.py`` times the GEMVs, plus ``torch.sum`` over the same bytes and an
empty kernel (the per-launch cost inside a graph). The best of them is what a GEMV doing no
arithmetic at all would take. Writes ``<out>/read_floor.json``; prints the table last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import GROUP, L2_ROTATE_BYTES, copy_bandwidth_tbps, graph_us, log, rough_us  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (8192, 28672)]  # (K, N)


@triton.jit
def _read_kernel(src, dst, n_words, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.int32)
    base = pid * (BLOCK * ITERS)
    for i in range(ITERS):
        idx = base + i * BLOCK + offs
        acc ^= tl.load(src + idx, mask=idx < n_words, other=0)
    tl.store(dst + pid, tl.reduce(acc, 0, _xor))


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _empty_kernel(dst):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    copy_tbps = copy_bandwidth_tbps()
    props = torch.cuda.get_device_properties(0)
    log(f"device {props.name}; copy {copy_tbps:.2f} TB/s")
    rows = []
    sink = torch.empty(1 << 20, dtype=torch.int32, device="cuda")
    empty = graph_us([lambda: _empty_kernel[(1,)](sink)], 5.0)
    rows.append({"what": "empty kernel", "us": empty})
    for k, n in SHAPES:
        nbytes = n * k // 2 + 2 * (n * k // GROUP) * 2
        words = nbytes // 4
        floor = nbytes / (copy_tbps * 1e12) * 1e6
        copies = max(1, math.ceil(L2_ROTATE_BYTES / nbytes))
        bufs = [torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32, device="cuda")
                for _ in range(copies)]
        cols = {"torch.sum": [lambda b=b: b.sum() for b in bufs]}
        for block in (1024, 2048, 4096):
            for iters in (1, 2, 4, 8, 16):
                for warps in (4, 8):
                    grid = (triton.cdiv(words, block * iters),)
                    cols[f"read b{block} it{iters} w{warps}"] = [
                        lambda b=b, grid=grid, block=block, iters=iters, warps=warps:
                        _read_kernel[grid](b, sink, words, BLOCK=block, ITERS=iters,
                                           num_warps=warps) for b in bufs]
        for name, fns in cols.items():
            us = graph_us(fns, rough_us(fns[0]))
            rows.append({"K": k, "N": n, "bytes": nbytes, "what": name, "us": us,
                         "floor_us": floor, "tbps": nbytes / us / 1e6})
            log(f"{k}x{n} {name:28s} {us:8.2f} us  {nbytes / us / 1e6:.2f} TB/s  "
                f"{100 * floor / us:.0f}% floor")
        del bufs
        torch.cuda.empty_cache()
    doc = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "copy_tbps": copy_tbps,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "PYTHONPATH=src python3 bench/read_floor.py --out $OUT", "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "read_floor.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["| K×N | MB | best read | µs | TB/s | % floor | torch.sum µs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, n in SHAPES:
        rs = [r for r in rows if r.get("K") == k and r.get("N") == n]
        best = min(rs, key=lambda r: r["us"])
        tsum = next(r for r in rs if r["what"] == "torch.sum")
        lines.append(f"| {k}×{n} | {best['bytes'] / 1e6:.1f} | {best['what']} | {best['us']:.2f} | "
                     f"{best['tbps']:.2f} | {100 * best['floor_us'] / best['us']:.0f}% | "
                     f"{tsum['us']:.2f} |")
    log(f"empty kernel in a graph: {empty:.2f} us")
    log("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
