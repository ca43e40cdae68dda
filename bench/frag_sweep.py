"""The fragment-ordered 4-bit kernel (``triton_mma_frag``) beside the shipped small-batch kernels.

    PYTHONPATH=src python3 bench/frag_sweep.py --out $OUT [--batches 1,2,4,8,16,32,64]

For each weight shape and batch, times bf16 ``F.linear``, ``torch._weight_int4pack_mm``, the
shipped candidates of that batch (``gemv_half2`` at batch 1, ``pairs`` above) and a grid of
``frag`` configs, every one under a CUDA graph cycling through weight copies larger than L2 (as
``bench/kernels.py`` does), with its relative error against a float64 dequantize-then-matmul
reference. Int4 asym g128, bf16 activations. Writes ``<out>/frag_sweep.json``; prints the best of
each family per point last.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv_sweep import run_sweeps, streaming_setup, sweep_arguments, timed_row  # noqa: E402



def frag_grid_large(m: int, n: int) -> list:
    """Large batches: wider programs and two warpgroups (one may dequantize while the other's
    MMAs run), batch tiles of 128 or 256 columns."""
    from lowbit.kernels.triton_weight_only import KernelConfig

    out = []
    for bn, bm, warps, stages, bk in ((128, 256, 8, 3, 64), (128, 256, 8, 4, 64),
                                      (128, 256, 8, 2, 128), (128, 256, 8, 3, 128),
                                      (128, 128, 8, 4, 64), (128, 128, 8, 3, 128),
                                      (64, 256, 4, 3, 64)):
        out.append(KernelConfig("frag", block_n=bn, block_m=min(bm, max(16, m)), block_k=bk,
                                split_k=1, num_warps=warps, num_stages=stages))
    return out


def frag_grid(m: int, n: int) -> list:
    """(rows per program, warps, stages) × K tile × split-K."""
    from lowbit.kernels.triton_weight_only import KernelConfig

    bm = max(16, 1 << max(m - 1, 0).bit_length())
    out = []
    for bn, warps, stages in ((64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 4, 4)):
        programs = -(-n // bn)
        for split in (1, 2, 4, 8):
            if split > 1 and programs * split > 16 * 132:
                continue
            for bk in (64, 128):
                out.append(KernelConfig("frag", block_n=bn, block_m=bm, block_k=bk,
                                        split_k=split, num_warps=warps, num_stages=stages))
    return out


def sweep(k: int, n: int, m: int, copy_tbps: float, notes: list, grid=None) -> list[dict]:
    """Every column at one point; ``grid(m, n)``: the frag configs (``frag_grid`` by default)."""
    from lowbit.kernels.triton_mma_frag import frag_copies, mma_frag
    from lowbit.kernels.triton_weight_only import candidates, run_config

    st = streaming_setup(k, n, m, copy_tbps)
    x, layouts = st["x"], st["layouts"]
    frags = [frag_copies(lo, torch.bfloat16) for lo in layouts]
    cols = {("bf16", "bf16"): st["bf16"], ("int4pack", "int4pack"): st["int4pack"]}
    for cfg in candidates(m, bits=4):
        if cfg.path in ("gemv_half2", "pairs"):
            cols[("shipped", cfg.label())] = [lambda lo=lo, cfg=cfg: run_config(x, lo, None, cfg)
                                              for lo in layouts]
    for cfg in (grid or frag_grid)(m, n):
        cols[("frag", cfg.label())] = [lambda lo=lo, f=f, cfg=cfg: mma_frag(x, lo, *f, None, cfg)
                                       for lo, f in zip(layouts, frags)]
    rows = [timed_row({"K": k, "N": n, "M": m, "family": family, "config": name,
                       "floor_us": st["floor"]}, fns, st["ref"], notes)
            for (family, name), fns in cols.items()]
    del st, frags, cols
    torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| K×N | M | bf16 | int4pack | shipped best | frag best | frag ×bf16 | ×int4pack | "
             "×shipped | % floor | frag config | err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    points: dict = {}
    for r in rows:
        if r.get("us") is not None:
            points.setdefault((r["K"], r["N"], r["M"]), []).append(r)
    for (k, n, m), rs in points.items():
        best = {}
        for r in rs:
            if r["family"] not in best or r["us"] < best[r["family"]]["us"]:
                best[r["family"]] = r
        if not {"bf16", "int4pack", "shipped", "frag"} <= best.keys():
            continue
        f = best["frag"]
        lines.append(
            f"| {k}×{n} | {m} | {best['bf16']['us']:.1f} | {best['int4pack']['us']:.1f} | "
            f"{best['shipped']['us']:.1f} | {f['us']:.1f} | {best['bf16']['us'] / f['us']:.2f} | "
            f"{best['int4pack']['us'] / f['us']:.2f} | {best['shipped']['us'] / f['us']:.2f} | "
            f"{100 * f['floor_us'] / f['us']:.0f}% | {f['config']} | {f['rel_err']:.1e} |")
    return "\n".join(lines)


def main() -> int:
    ap = sweep_arguments(__doc__.splitlines()[0], "1,2,4,8,16,32,64,128,256")
    ap.add_argument("--large", action="store_true", help="the large-batch grid (M ≥ 256)")
    args = ap.parse_args()
    command = (f"PYTHONPATH=src python3 bench/frag_sweep.py --out $OUT --batches {args.batches}"
               + (f" --shapes {args.shapes}" if args.shapes != "all" else "")
               + (" --large" if args.large else ""))
    grid = frag_grid_large if args.large else frag_grid
    return run_sweeps(args, functools.partial(sweep, grid=grid), "frag_sweep.json", command, table)


if __name__ == "__main__":
    sys.exit(main())
