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

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv_sweep import streaming_setup, timed_row  # noqa: E402
from kernels import copy_bandwidth_tbps, import_lowbit, log  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]  # (K, N)
LARGE = False  # --large: the large-batch grid


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


def sweep(k: int, n: int, m: int, copy_tbps: float, notes: list) -> list[dict]:
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
    for cfg in (frag_grid_large(m, n) if LARGE else frag_grid(m, n)):
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x14336 (K×N)")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help="comma-separated M")
    ap.add_argument("--large", action="store_true", help="the large-batch grid (M ≥ 256)")
    args = ap.parse_args()
    global LARGE
    LARGE = args.large
    shapes = SHAPES if args.shapes == "all" else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    notes: list = []
    import_lowbit(notes)
    import triton

    props = torch.cuda.get_device_properties(0)
    copy_tbps = copy_bandwidth_tbps()
    doc = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "copy_tbps": copy_tbps,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "PYTHONPATH=src python3 bench/frag_sweep.py --out $OUT "
                      f"--batches {args.batches}" + (f" --shapes {args.shapes}"
                                                     if args.shapes != "all" else "")
                      + (" --large" if args.large else ""),
           "notes": notes, "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for k, n in shapes:
        for m in [int(v) for v in args.batches.split(",")]:
            doc["rows"] += sweep(k, n, m, copy_tbps, notes)
            log(f"{k}x{n} M={m} done at {time.time() - t0:.0f} s")
        doc["seconds"] = time.time() - t0
        (out / "frag_sweep.json").write_text(json.dumps(doc, indent=1) + "\n")
    for note in notes[:20]:
        log("note:", note)
    log(f"copy ceiling {copy_tbps:.2f} TB/s")
    log(table(doc["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
