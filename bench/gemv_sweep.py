"""Every small-batch W4A16 kernel config side by side on one GPU, weights streaming from HBM.

    PYTHONPATH=src python3 bench/gemv_sweep.py --out $OUT [--batches 1,2,4,8]

The dispatch's tuner times its candidates with the weights resident in L2, which can rank decode
configs differently from a real decode step. This times each batch-1 candidate of both lists
(``candidates(1, 4)``: ``gemv_half2``; ``candidates(1, 8)``: ``gemv``, ``gemv_planes``, ``planes``) under a CUDA graph cycling through
weight copies larger than L2 (as ``bench/kernels.py`` does), beside bf16 ``F.linear`` and
``torch._weight_int4pack_mm``, with each config's relative error against a float64
dequantize-then-matmul reference. Int4 asym g128, bf16 activations. Writes
``<out>/gemv_sweep.json`` and prints the table last.
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
from kernels import (  # noqa: E402
    GROUP, L2_ROTATE_BYTES, copy_bandwidth_tbps, graph_us, import_lowbit, int4pack, log,
    lowbit_w4, make_codes, rough_us,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]  # (K, N)


def streaming_setup(k: int, n: int, m: int, copy_tbps: float) -> dict:
    """W4 g128 layers of shape ``(N, K)`` in enough copies to stream from HBM, their layouts, a
    batch ``x (M, K)``, its float64 reference product, the 4-bit floor, and the two baselines'
    columns (bf16 ``F.linear`` and ``torch._weight_int4pack_mm``, each over its own copies)."""
    from lowbit.kernels.triton_layout import WeightLayout

    w4_bytes = n * k // 2 + 2 * (n * k // GROUP) * 2
    copies = max(1, math.ceil(L2_ROTATE_BYTES / w4_bytes))
    copies_bf16 = max(1, math.ceil(L2_ROTATE_BYTES / (2 * n * k)))
    layers = [lowbit_w4(*make_codes(n, k, seed=k + n + i)) for i in range(copies)]
    w64 = layers[0].dequantized_weight(torch.float64)
    tiny = [int4pack(*make_codes(n, k, seed=k + n + i)) for i in range(copies)]
    wbf = [layers[0].dequantized_weight(torch.bfloat16)] + [
        torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(1, copies_bf16)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    return {"layers": layers, "layouts": [WeightLayout.of(q) for q in layers], "x": x,
            "ref": x.double() @ w64.T,
            "floor": (w4_bytes + 2 * m * (k + n)) / (copy_tbps * 1e12) * 1e6,
            "bf16": [lambda w=w: F.linear(x, w) for w in wbf],
            "int4pack": [lambda t=t: torch._weight_int4pack_mm(x, t[0], GROUP, t[1]) for t in tiny]}


def timed_row(row: dict, fns: list, ref, notes: list) -> dict:
    """``row`` with the column's time under a CUDA graph cycling through ``fns`` (``us``, None if
    it fails: the error goes to ``notes``) and, given ``ref``, its first call's relative error."""
    try:
        with torch.no_grad():
            out = fns[0]()
            torch.cuda.synchronize()
            if ref is not None:
                row["rel_err"] = float((out.double() - ref).norm() / ref.norm())
            row["us"] = graph_us(fns, rough_us(fns[0]))
    except Exception as e:
        notes.append(f"{row.get('config')} K={row.get('K')} N={row.get('N')} M={row.get('M')}: "
                     f"{type(e).__name__}: {str(e)[-300:]}")
        row["us"] = None
    return row


def sweep_shape(k: int, n: int, m: int, copy_tbps: float, notes: list) -> list[dict]:
    from lowbit.kernels.triton_weight_only import candidates, run_config

    st = streaming_setup(k, n, m, copy_tbps)
    x, layouts = st["x"], st["layouts"]
    cols = {"bf16": st["bf16"], "int4pack": st["int4pack"]}
    # At batch 1 the 8-bit list (the older GEMVs) beside the 4-bit one: both read 4-bit codes.
    for cfg in candidates(m, bits=4) + (candidates(1, bits=8) if m == 1 else []):
        cols[cfg.label()] = [lambda lo=lo, cfg=cfg: run_config(x, lo, None, cfg) for lo in layouts]
    # The fixed costs around the half2 GEMV: its input pass and the split-K sum, alone.
    from lowbit.kernels.triton_splitk import reduce_partials
    from lowbit.kernels.triton_xhalf2 import x_half2

    ws = {s: torch.randn(s, 1, n, device="cuda") for s in (2, 8)}
    cols["(x_half2 pass alone)"] = [lambda: x_half2(x, layouts[0].kw)]
    for s_, w_ in ws.items():
        cols[f"(split-K sum s{s_} alone)"] = [lambda w_=w_: reduce_partials(w_, None, x.dtype)]
    rows = []
    for name, fns in cols.items():
        row = timed_row({"K": k, "N": n, "M": m, "config": name, "floor_us": st["floor"]}, fns,
                        None if name.startswith("(") else st["ref"], notes)
        rows.append(row)
        log(f"  {k}x{n} M={m} {name:40s} {row.get('us') or float('nan'):8.1f} us "
            f"err {row.get('rel_err', float('nan')):.2e}")
    del st, cols
    torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| K×N | M | config | µs | % floor | ×bf16 | ×int4pack | err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_shape: dict = {}
    for r in rows:
        by_shape.setdefault((r["K"], r["N"], r["M"]), []).append(r)
    for (k, n, m), rs in by_shape.items():
        base = {r["config"]: r.get("us") for r in rs}
        for r in sorted(rs, key=lambda r: r.get("us") or 1e9):
            us = r.get("us")
            if us is None:
                continue
            lines.append(
                f"| {k}×{n} | {m} | {r['config']} | {us:.1f} | {100 * r['floor_us'] / us:.0f}% | "
                f"{base['bf16'] / us:.2f} | {base['int4pack'] / us:.2f} | "
                f"{r.get('rel_err', float('nan')):.1e} |")
    return "\n".join(lines)


def sweep_arguments(description: str, batches: str) -> argparse.ArgumentParser:
    """The options every sweep takes (``--out``, ``--shapes``, ``--batches``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x14336 (K×N)")
    ap.add_argument("--batches", default=batches, help="comma-separated M, e.g. 1,2,4,8")
    return ap


def run_sweeps(args, sweep_fn, json_name: str, command: str, table_fn) -> int:
    """``sweep_fn(k, n, m, copy_tbps, notes)`` for every shape and batch of ``args``, the rows
    written to ``<out>/json_name`` after each shape (with the machine, versions, date and
    ``command``), the notes and ``table_fn(rows)`` printed last."""
    shapes = SHAPES if args.shapes == "all" else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    notes: list = []
    import_lowbit(notes)
    import triton

    props = torch.cuda.get_device_properties(0)
    copy_tbps = copy_bandwidth_tbps()
    doc = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "copy_tbps": copy_tbps,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command,
           "notes": notes, "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for k, n in shapes:
        for m in [int(v) for v in args.batches.split(",")]:
            doc["rows"] += sweep_fn(k, n, m, copy_tbps, notes)
            log(f"{k}x{n} M={m} done at {time.time() - t0:.0f} s")
        doc["seconds"] = time.time() - t0
        (out / json_name).write_text(json.dumps(doc, indent=1) + "\n")
    for note in notes[:20]:
        log("note:", note)
    log(f"copy ceiling {copy_tbps:.2f} TB/s")
    log(table_fn(doc["rows"]))
    return 0


def main() -> int:
    args = sweep_arguments(__doc__.splitlines()[0], "1").parse_args()
    return run_sweeps(args, sweep_shape, "gemv_sweep.json",
                      f"PYTHONPATH=src python3 bench/gemv_sweep.py --out $OUT --batches {args.batches}",
                      table)


if __name__ == "__main__":
    sys.exit(main())
