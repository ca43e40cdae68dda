"""Sweep of the Gluon W4A16 GEMM (kernels/gluon_w4a16_mm.py) against bf16 ``F.linear`` and
lowbit's tuned dispatch, at the large batches where weight-only layers must keep up with bf16.

    PYTHONPATH=src python3 bench/w4a16_gluon_sweep.py --out $OUT
    PYTHONPATH=src python3 bench/w4a16_gluon_sweep.py --shapes 4096x14336 --batches 1024 --pick 0,2

Conditions are bench/kernels.py's: int4 asym g128 codes (bf16 scales, int zeros), CUDA-graph
replays cycling through weight copies larger than L2, median of 7 replays. Each Gluon config is
first run three times and checked against a float64 dequantize-then-matmul reference (relative
Frobenius error) and for repeatability (equal outputs); a config that fails either, or to build, is
reported, not timed. Before the sweep, every kernel is also checked on the layer variants the
sweep's codes do not cover (symmetric, per channel, a bias, a partial batch tile). The columns
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

# (block_n, block_m, stages, group_m, warps[, split_k[, prefetch[, sub-steps]]])
CONFIGS = [(128, 256, 4, 8, 8), (128, 256, 3, 8, 8), (128, 256, 5, 8, 8), (128, 256, 4, 16, 8), (128, 128, 4, 8, 8),
           (128, 128, 6, 8, 8), (128, 64, 6, 8, 8),
           # K split: layers whose tiles alone leave SMs idle (14336×4096)
           (128, 256, 4, 8, 8, 2), (128, 256, 4, 8, 8, 4), (128, 128, 6, 8, 8, 2), (128, 128, 6, 8, 8, 4),
           # the next step's code words read while this step's MMAs run
           (128, 256, 4, 8, 8, 1, True), (128, 128, 6, 8, 8, 1, True), (128, 256, 4, 16, 8, 1, True),
           (128, 256, 4, 8, 8, 4, True), (128, 256, 4, 8, 8, 2, True),
           # small batches (the MMA's N 16–64): 64-row weight tiles on one warpgroup or 128 on two, deep
           # pipelines, K split for more programs in flight
           (64, 16, 8, 8, 4, 1, True), (64, 16, 8, 8, 4, 2, True), (64, 16, 8, 8, 4, 4, True),
           (128, 16, 8, 8, 8, 1, True), (128, 16, 8, 8, 8, 2, True), (64, 32, 8, 8, 4, 2, True),
           (64, 64, 6, 8, 4, 1, True), (128, 64, 6, 8, 8, 1, True), (64, 64, 6, 8, 4, 2, True),
           # two 64-input sub-steps per pipeline step: barriers, copies issued and scale loads once per 128
           (64, 16, 4, 8, 4, 4, False, 2), (64, 16, 4, 8, 4, 2, False, 2), (64, 64, 3, 8, 4, 1, False, 2),
           (128, 64, 3, 8, 8, 1, False, 2), (128, 128, 3, 8, 8, 1, False, 2), (128, 256, 3, 16, 8, 1, False, 2),
           (128, 256, 2, 16, 8, 1, False, 2),
           # small batches with two sub-steps: deeper pipelines, more splits, 32-row batch tiles
           (64, 16, 6, 8, 4, 4, False, 2), (64, 16, 8, 8, 4, 4, False, 2), (64, 16, 4, 8, 4, 8, False, 2),
           (64, 16, 6, 8, 4, 2, False, 2), (64, 32, 4, 8, 4, 2, False, 2), (64, 32, 6, 8, 4, 2, False, 2),
           (64, 32, 4, 8, 4, 4, False, 2), (64, 64, 4, 8, 4, 1, False, 2), (64, 64, 4, 8, 4, 2, False, 2)]


def kernels(pick) -> list:
    """(label, fn(x, layout, bias)) for the picked configs."""
    from lowbit.kernels import gluon_w4a16_mm as g
    out = []
    for c in CONFIGS if pick is None else [CONFIGS[int(i)] for i in pick.split(",") if i]:
        out.append((f"gluon n{c[0]}m{c[1]} s{c[2]} g{c[3]} w{c[4]}" + (f" k{c[5]}" if len(c) > 5 and c[5] > 1 else "")
                    + (" pf" if len(c) > 6 and c[6] else "") + (f" u{c[7]}" if len(c) > 7 else ""),
                    lambda x, lay, bias, c=c: g.w4a16_mm_gluon(x, lay, bias, *c)))
    return out


def check_variants(fns, notes) -> dict:
    """Relative error against float64 of every kernel on the layers the sweep does not cover."""
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats import FormatSpec
    from lowbit.kernels.triton_layout import WeightLayout
    from lowbit.modules import QuantLinear

    n, k, m = 1024, 2048, 300
    errs = {}
    for spec, bias in ((FormatSpec(bits=4, sym=True, group_size=128), True),
                       (FormatSpec(bits=4, sym=False, group_size=-1), True),
                       (FormatSpec(bits=4, sym=False, group_size=64), False)):
        gen = torch.Generator(device="cuda").manual_seed(spec.group_size + 7)
        groups = spec.n_groups(k)
        codes = torch.randint(0, 16, (n, k), generator=gen, device="cuda", dtype=torch.uint8)
        scale = (torch.rand(n, groups, generator=gen, device="cuda") * 0.02 + 0.005).bfloat16()
        zero = None if spec.sym else torch.randint(0, 16, (n, groups), generator=gen, device="cuda", dtype=torch.int32)
        b = torch.randn(n, generator=gen, device="cuda").bfloat16() if bias else None
        layer = QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec), b).eval()
        x = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
        ref = x.double() @ layer.dequantized_weight(torch.float64).T + (b.double() if bias else 0)
        variant = f"{'sym' if spec.sym else 'asym'} g{spec.group_size}{' bias' if bias else ''} M={m}"
        for name, fn in fns:
            try:
                out = fn(x, WeightLayout.of(layer), b)
                errs.setdefault(name, {})[variant] = float((out.double() - ref).norm() / ref.norm())
            except Exception as e:  # noqa: BLE001 - report and go on
                notes.append(f"{name} {variant}: {type(e).__name__}: {str(e)[-300:]}")
                traceback.print_exc()
            if errs.get(name, {}).get(variant, 0.0) > 1e-2:
                notes.append(f"{name} {variant}: wrong (rel err {errs[name][variant]:.2e})")
    return errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x14336,14336x4096,8192x28672,4096x4096", help="K×N list")
    ap.add_argument("--batches", default="128,256,512,1024,2048,4096")
    ap.add_argument("--pick", default=None, help="indices into CONFIGS (default: all; '' for none)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    notes: list = []
    import_lowbit(notes)
    from lowbit.kernels.triton_layout import WeightLayout

    fns = kernels(args.pick)
    variant_errs = check_variants(fns, notes)
    print("variants:", variant_errs, flush=True)
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
                for name, fn in fns:
                    try:
                        # three calls: a kernel racing on its registers gives call-to-call varying results
                        outs = [fn(x, layouts[0], None) for _ in range(3)]
                        torch.cuda.synchronize()
                        out = outs[0]
                        row["rel_err"][name] = max(float((o.double() - ref).norm() / ref.norm()) for o in outs)
                        row.setdefault("repeatable", {})[name] = all(torch.equal(o, out) for o in outs)
                        row.setdefault("max_abs_vs_dispatch", {})[name] = float((out.float() - base.float()).abs().max())
                        cols[name] = [lambda lay=lay, fn=fn: fn(x, lay, None) for lay in layouts]
                    except Exception as e:  # noqa: BLE001 - report and go on
                        notes.append(f"{name} K={k} N={n} M={m}: {type(e).__name__}: {str(e)[-300:]}")
                        traceback.print_exc()
                for name, calls in cols.items():
                    if name not in ("bf16", "dispatch") and (row["rel_err"][name] > 1e-2 or not row["repeatable"][name]):
                        notes.append(f"{name} K={k} N={n} M={m}: wrong (rel err {row['rel_err'][name]:.2e}, "
                                     f"repeatable {row['repeatable'][name]}), not timed")
                        continue
                    row["us"][name] = graph_us(calls, rough_us(calls[0]))
            mine = [(v, c) for c, v in row["us"].items() if c not in ("bf16", "dispatch")]
            best = min(mine) if mine else (None, None)
            row["best_gluon"] = best[1]
            rows.append(row)
            print(f"K={k} N={n} M={m}: bf16 {row['us']['bf16']:.1f} dispatch {row['us']['dispatch']:.1f} "
                  f"best {best[1]} {best[0]:.1f} | " + " ".join(f"{c} {v:.1f}" for c, v in row["us"].items()), flush=True)
        del mods, layouts, wbf
        torch.cuda.empty_cache()

    names = [name for name, _ in fns]
    head = "| K×N | M | bf16 | dispatch | ×bf16 | " + " | ".join(names) + " | best ×bf16 |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        u = r["us"]
        b = u["bf16"]
        best = u.get(r["best_gluon"]) if r["best_gluon"] else None
        cells = [f"{u[c]:.1f}" if c in u else "—" for c in names]
        lines.append(f"| {r['K']}×{r['N']} | {r['M']} | {b:.1f} | {u['dispatch']:.1f} | {b / u['dispatch']:.2f} | "
                     + " | ".join(cells) + (f" | {b / best:.2f} |" if best else " | — |"))
    variants = sorted({v for e in variant_errs.values() for v in e})
    if variants:
        lines += ["", "Relative error on the other layer variants (1024×2048 weights, 300 rows):", "",
                  "| kernel | " + " | ".join(variants) + " |", "|" + " --- |" * (len(variants) + 1)]
        lines += [f"| {name} | " + " | ".join(f"{e[v]:.1e}" if v in e else "—" for v in variants) + " |"
                  for name, e in variant_errs.items()]
    table = "\n".join(lines) + ("\n\nnotes:\n" + "\n".join(f"- {x}" for x in notes) if notes else "")
    record(Path(args.out), "w4a16_gluon_sweep", "Gluon W4A16 GEMM sweep (µs, CUDA graphs)", "w4a16_gluon_sweep.py",
           sys.argv[1:], table, rows=rows, notes=notes, variant_rel_err=variant_errs,
           configs=names)


if __name__ == "__main__":
    main()
