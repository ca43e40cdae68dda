"""W8A8 int8 at decode batches: the one-launch int8 GEMV's configs beside the torch._int_mm path.

    PYTHONPATH=src python3 bench/int8_gemv_sweep.py --out $OUT [--batches 1,2,4]

For each K×N of bench/kernels.py and each batch, times under a CUDA graph (weights rotated over
copies larger than L2, as bench/kernels.py does) bf16 ``F.linear``, the W8A8 layer as it ran
before the GEMV (input pass + ``torch._int_mm`` padded to 17 rows + scaling pass) and every
``int8_gemv`` config, and checks each GEMV's output equals the ``_int_mm`` path's bit for bit (both
are exact integer products scaled the same way). Writes ``<out>/int8_gemv_sweep.json``; prints a
table last.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import L2_ROTATE_BYTES, graph_us, import_lowbit, log, rough_us  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]  # (K, N)
# (rows per program, K tile, split-K, warps)
CONFIGS = [(32, 256, 1, 1), (32, 256, 2, 1), (32, 256, 4, 1), (32, 512, 2, 2), (64, 256, 2, 2),
           (16, 256, 4, 1), (16, 512, 4, 1), (64, 512, 1, 4), (32, 1024, 2, 4), (128, 256, 2, 4)]


def int_mm_path(x, codes, w_scale, bias):
    from lowbit.kernels.cuda_w8a8 import INT_MM_MIN_M, quantize_input
    from lowbit.kernels.triton_act_quant import scale_int32

    m = x.shape[0]
    q, sx = quantize_input(x, None, fp8=False, rows=max(m, INT_MM_MIN_M))
    acc = torch._int_mm(q, codes.t())[:m]
    return scale_int32(acc, sx[:m], w_scale, bias, x.dtype)


def sweep(k: int, n: int, m: int, notes: list) -> list[dict]:
    from lowbit.kernels.triton_int8_gemv import int8_gemv

    copies = max(1, math.ceil(L2_ROTATE_BYTES / (n * k)))
    copies_bf16 = max(1, math.ceil(L2_ROTATE_BYTES / (2 * n * k)))
    g = torch.Generator(device="cuda").manual_seed(k + n)
    codes = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=g)
             for _ in range(copies)]
    w_scale = torch.rand(n, device="cuda") * 0.01 + 1e-3
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    wbf = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies_bf16)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = int_mm_path(x, codes[0], w_scale, bias)
    cols = {"bf16": [lambda w=w: F.linear(x, w) for w in wbf],
            "_int_mm path": [lambda c=c: int_mm_path(x, c, w_scale, bias) for c in codes]}
    for bn, bk, s, w in CONFIGS:
        cols[f"gemv n{bn}k{bk} s{s} w{w}"] = [
            lambda c=c, bn=bn, bk=bk, s=s, w=w: int8_gemv(x, c, w_scale, None, bias, bn, bk, s, w)
            for c in codes]
    rows = []
    for name, fns in cols.items():
        row = {"K": k, "N": n, "M": m, "config": name}
        try:
            out = fns[0]()
            torch.cuda.synchronize()
            if name != "bf16":
                row["exact"] = bool(torch.equal(out, ref))
            row["us"] = graph_us(fns, rough_us(fns[0]))
        except Exception as e:
            notes.append(f"{name} K={k} N={n} M={m}: {type(e).__name__}: {str(e)[-300:]}")
            row["us"] = None
        rows.append(row)
        log(f"  {k}x{n} M={m} {name:28s} {row.get('us') or float('nan'):8.1f} us "
            f"exact {row.get('exact')}")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| K×N | M | config | µs | ×bf16 | ×_int_mm path | exact |", "| --- " * 7 + "|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["K"], r["N"], r["M"]), []).append(r)
    for (k, n, m), rs in groups.items():
        base = {r["config"]: r.get("us") for r in rs}
        for r in sorted(rs, key=lambda r: r.get("us") or 1e9)[:4]:
            if r.get("us") is None:
                continue
            lines.append(f"| {k}×{n} | {m} | {r['config']} | {r['us']:.1f} | "
                         f"{base['bf16'] / r['us']:.2f} | {base['_int_mm path'] / r['us']:.2f} | "
                         f"{r.get('exact', '')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--batches", default="1,2,4")
    args = ap.parse_args()
    notes: list = []
    import_lowbit(notes)
    import triton

    doc = {"device": torch.cuda.get_device_properties(0).name, "torch": torch.__version__,
           "triton": triton.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": f"PYTHONPATH=src python3 bench/int8_gemv_sweep.py --out $OUT --batches {args.batches}",
           "notes": notes, "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, n in SHAPES:
        for m in [int(v) for v in args.batches.split(",")]:
            doc["rows"] += sweep(k, n, m, notes)
        (out / "int8_gemv_sweep.json").write_text(json.dumps(doc, indent=1) + "\n")
    for note in notes:
        log("note:", note)
    log(table(doc["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
