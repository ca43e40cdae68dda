"""Sweep of the Gluon W4A16 GEMM (kernels/gluon_w4a16_mm.py) against bf16 ``F.linear`` and
lowbit's tuned dispatch, at the large batches where weight-only layers must keep up with bf16.

    PYTHONPATH=src python3 bench/w4a16_gluon_sweep.py --out $OUT
    PYTHONPATH=src python3 bench/w4a16_gluon_sweep.py --shapes 4096x14336 --batches 1024 --pick 0,2

Conditions are bench/kernels.py's: int4 asym g128 codes (bf16 scales, int zeros), CUDA-graph
replays cycling through weight copies larger than L2, median of 7 replays. Each Gluon config is
first run three times and checked against a float64 dequantize-then-matmul reference (relative
Frobenius error) and for repeatability (equal outputs); a config that fails either, or to build, is
reported, not timed. The columns
are interleaved per point (bf16, dispatch, every config), so clock and power drift hit them alike.
Writes ``<out>/w4a16_gluon_sweep.json`` and ``.md``; prints the table last.
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import GROUP, L2_ROTATE_BYTES, graph_us, import_lowbit, lowbit_w4, make_codes, rough_us  # noqa: E402
from run_record import record  # noqa: E402

# (block_n, block_m, stages, group_m, warps)
CONFIGS = [(128, 256, 4, 8, 8), (128, 256, 3, 8, 8), (128, 256, 5, 8, 8), (128, 256, 4, 16, 8), (128, 128, 4, 8, 8),
           (128, 128, 6, 8, 8), (128, 64, 6, 8, 8)]


def label(c) -> str:
    return f"gluon n{c[0]}m{c[1]} s{c[2]} g{c[3]} w{c[4]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x14336,14336x4096,8192x28672,4096x4096", help="K×N list")
    ap.add_argument("--batches", default="128,256,512,1024,2048,4096")
    ap.add_argument("--pick", default=None, help="indices into CONFIGS (default: all)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    notes: list = []
    import_lowbit(notes)
    from lowbit.kernels import gluon_w4a16_mm as g
    from lowbit.kernels.triton_layout import WeightLayout

    configs = CONFIGS if args.pick is None else [CONFIGS[int(i)] for i in args.pick.split(",")]
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        w4_bytes = n * k // 2 + 2 * (n * k // GROUP) * 2
        copies = max(1, math.ceil(L2_ROTATE_BYTES / w4_bytes))
        mods = [lowbit_w4(*make_codes(n, k, seed=k + n + i)) for i in range(copies)]
        layouts = [WeightLayout.of(q) for q in mods]
        w64 = mods[0].dequantized_weight(torch.float64)
        wbf = [q.dequantized_weight(torch.bfloat16) for q in mods[:max(1, math.ceil(copies / 4))]]
        for m in (int(b) for b in args.batches.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w64.T
            row = {"K": k, "N": n, "M": m, "us": {}, "rel_err": {}}
            with torch.no_grad():
                base = mods[0](x)  # tunes the dispatch for this bucket
                cols = {"bf16": [lambda w=w: F.linear(x, w) for w in wbf],
                        "dispatch": [lambda q=q: q(x) for q in mods]}
                row["rel_err"]["dispatch"] = float((base.double() - ref).norm() / ref.norm())
                for c in configs:
                    name = label(c)
                    try:
                        # three calls: a kernel racing on its registers gives call-to-call varying results
                        outs = [g.w4a16_mm_gluon(x, layouts[0], None, *c) for _ in range(3)]
                        torch.cuda.synchronize()
                        out = outs[0]
                        row["rel_err"][name] = max(float((o.double() - ref).norm() / ref.norm()) for o in outs)
                        row.setdefault("repeatable", {})[name] = all(torch.equal(o, out) for o in outs)
                        row.setdefault("max_abs_vs_dispatch", {})[name] = float((out.float() - base.float()).abs().max())
                        cols[name] = [lambda lay=lay, c=c: g.w4a16_mm_gluon(x, lay, None, *c) for lay in layouts]
                    except Exception as e:  # noqa: BLE001 - report and go on
                        notes.append(f"{name} K={k} N={n} M={m}: {type(e).__name__}: {str(e)[-300:]}")
                        traceback.print_exc()
                for name, fns in cols.items():
                    if name.startswith("gluon") and (row["rel_err"][name] > 1e-2 or not row["repeatable"][name]):
                        notes.append(f"{name} K={k} N={n} M={m}: wrong (rel err {row['rel_err'][name]:.2e}, "
                                     f"repeatable {row['repeatable'][name]}), not timed")
                        continue
                    row["us"][name] = graph_us(fns, rough_us(fns[0]))
            best = min((v, c) for c, v in row["us"].items() if c.startswith("gluon")) if any(
                c.startswith("gluon") for c in row["us"]) else (None, None)
            row["best_gluon"] = best[1]
            rows.append(row)
            print(f"K={k} N={n} M={m}: bf16 {row['us']['bf16']:.1f} dispatch {row['us']['dispatch']:.1f} "
                  f"best {best[1]} {best[0]} | errs {row['rel_err']}", flush=True)
        del mods, layouts, wbf
        torch.cuda.empty_cache()

    names = [label(c) for c in configs]
    head = "| K×N | M | bf16 | dispatch | ×bf16 | " + " | ".join(names) + " | best ×bf16 |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        u = r["us"]
        b = u["bf16"]
        best = u.get(r["best_gluon"]) if r["best_gluon"] else None
        cells = [f"{u[c]:.1f}" if c in u else "—" for c in names]
        lines.append(f"| {r['K']}×{r['N']} | {r['M']} | {b:.1f} | {u['dispatch']:.1f} | {b / u['dispatch']:.2f} | "
                     + " | ".join(cells) + (f" | {b / best:.2f} |" if best else " | — |"))
    table = "\n".join(lines) + ("\n\nnotes:\n" + "\n".join(f"- {x}" for x in notes) if notes else "")
    record(Path(args.out), "w4a16_gluon_sweep", "Gluon W4A16 GEMM sweep (µs, CUDA graphs)", "w4a16_gluon_sweep.py",
           sys.argv[1:], table, rows=rows, notes=notes,
           configs=[dict(zip(("block_n", "block_m", "stages", "group_m", "warps"), c)) for c in configs])


if __name__ == "__main__":
    main()
