"""W8A8 linear layers against bf16 ``F.linear`` on one GPU, timed under CUDA graphs.

    PYTHONPATH=src python3 bench/w8a8_kernels.py --out $OUT          # H100: the issue's table
    PYTHONPATH=src python3 bench/w8a8_kernels.py --device cpu --dry  # smoke check, small shapes
    ... --shapes 14336x4096 --batches 128,256,512   # other weight shapes (K×N) and batches

For each weight shape K×N (4096×14336, 8192×28672) and batch M (1, 16, 64, 256, 1024, 4096):
- ``bf16``: ``F.linear(x, W)``, the baseline;
- ``w8a8``: lowbit's ``W8A8Linear`` forward, what a model runs: per-token int8 quantization of x
  and the int8 product with both scales applied (the one-launch GEMV at M <= 2, lowbit's Triton
  GEMM above on Hopper; kernels/cuda_w8a8.py);
- ``fp8``: lowbit's ``FP8Linear`` forward (per-token E4M3 quantization of x, ``torch._scaled_mm``
  with row-wise scales);
- ``int_mm`` / ``scaled_mm``: the bare GEMM on already quantized inputs (the rest of the layer's
  time is activation quantization and, for int8, the scaling epilogue).
Every column is one CUDA graph replaying the op over enough weight copies that they do not stay
in L2 (50 MB on an H100), timed with CUDA events, median of 7 replays; the columns are timed
``--rounds`` times (3) in alternation and each reports the median of its rounds, since an H100
running at its power cap changes clocks from moment to moment. Correctness: the layer's
relative error (Frobenius) against a float64 product of the same quantized weights with the
unquantized input, and against lowbit's CPU-side reference kernel on the same device (exact
integers: only output rounding differs). Writes ``<out>/w8a8_kernels.json`` (rows as in
shared/BENCHMARK.md's kernels.json, ``timing: graph``) and prints the table last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_record import record  # noqa: E402
from kernels import graph_us  # noqa: E402  (one CUDA-graph timer for every kernel benchmark)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = [(4096, 14336), (8192, 28672)]  # (K, N)
BATCHES = [1, 16, 64, 256, 1024, 4096]
DRY_SHAPES, DRY_BATCHES = [(256, 512)], [1, 16, 64]
L2_ROTATE_BYTES = 192 << 20


def log(*a):
    print(*a, flush=True)


def import_lowbit(notes: list) -> None:
    """Import lowbit; where its package __init__ fails (a GPU machine without the checkpoint
    libraries it imports), load only the subpackages the layers need."""
    try:
        import lowbit  # noqa: F401
    except Exception as e:
        import types

        notes.append(f"import lowbit failed ({type(e).__name__}: {e}); loaded the layers without it")
        for name in [m for m in sys.modules if m == "lowbit" or m.startswith("lowbit.")]:
            del sys.modules[name]
        root = Path(__file__).resolve().parents[1] / "src" / "lowbit"
        # Empty packages: the layer files import, their packages' other members (which may need
        # newer transformers than the GPU machine has) do not.
        for name, path in (("lowbit", root), ("lowbit.modules", root / "modules")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(path)]
            sys.modules[name] = pkg
    import lowbit.kernels  # noqa: F401  (registers the CUDA kernels)


# ------------------------------------------------------------------ timing

def rough_us(fn, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(3):
        fn()
    sync()
    return (time.perf_counter() - t) / 3 * 1e6


def timed(fns: list, device) -> float:
    """Graph-timed on CUDA; on the CPU (smoke check) a plain wall-clock mean."""
    est = rough_us(fns[0], device)
    return graph_us(fns, est) if device.type == "cuda" else est


# ------------------------------------------------------------------ the layers

def make_layers(K: int, N: int, copies: int, device, seed: int):
    """``copies`` independent (bf16 weight, W8A8Linear, FP8Linear) triples of shape N×K."""
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats.fp8 import FP8_ROWS
    from lowbit.modules.fp8_linear import FP8Linear
    from lowbit.modules.w8a8_linear import WEIGHT_SPEC, W8A8Linear

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(copies):
        w = (torch.randn(N, K, generator=g, device=device) * 0.02).bfloat16()
        amax = w.float().abs().amax(1, keepdim=True)
        int_scale = (amax / 127.5).bfloat16()
        codes = (torch.round(w.float() / int_scale.float()) + 128).clamp(0, 255).to(torch.uint8)
        w8 = W8A8Linear.from_quantized(QuantizedWeight(codes, int_scale, None, WEIGHT_SPEC)).eval()
        fp8_scale = (amax / 448).bfloat16()
        fp8_codes = (w.float() / fp8_scale.float()).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        f8 = FP8Linear.from_quantized(QuantizedWeight(fp8_codes, fp8_scale, None, FP8_ROWS)).eval()
        out.append((w, w8, f8))
    return out


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


@torch.no_grad()
def measure(K: int, N: int, M: int, layers, device, rounds: int = 1) -> dict:
    from lowbit.kernels.activations import fp8_per_token, int8_per_token
    from lowbit.kernels.reference_w8a8 import fp8_linear, w8a8_int8_linear

    g = torch.Generator(device=device).manual_seed(M)
    x = torch.randn(M, K, generator=g, device=device).bfloat16()
    row = {"timing": "graph" if device.type == "cuda" else "eager-cpu", "K": K, "N": N, "M": M,
           "group_size": -1}
    cols = {"bf16_us": [lambda w=w: F.linear(x, w) for w, _, _ in layers],
            "lowbit_w8a8_us": [lambda m=m: m(x) for _, m, _ in layers]}
    q8, _ = int8_per_token(x)
    if device.type == "cuda" and M > 16:  # _int_mm's own limits (M > 16); the layer pads below that
        cols["int_mm_us"] = [lambda m=m: torch._int_mm(q8, m.weight_codes.t()) for _, m, _ in layers]
    fp8_ok = device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)
    if fp8_ok:
        cols["lowbit_fp8_us"] = [lambda m=m: m(x) for _, _, m in layers]
    if fp8_ok and device.type == "cuda" and M % 16 == 0:
        qf, sx = fp8_per_token(x)
        sx = sx.contiguous()
        cols["scaled_mm_us"] = [lambda m=m: torch._scaled_mm(
            qf, m.weight_codes.t(), scale_a=sx, scale_b=m.weight_scale.float().reshape(1, -1),
            out_dtype=torch.bfloat16) for _, _, m in layers]
    # Columns alternate, round after round, and each reports its median: the board's clocks follow
    # its power draw, so columns timed at different moments would otherwise compare different clocks.
    times = {c: [] for c in cols}
    for _ in range(rounds):
        for c, fns in cols.items():
            times[c].append(timed(fns, device))
    for c in ("bf16_us", "lowbit_w8a8_us", "int_mm_us", "lowbit_fp8_us", "scaled_mm_us"):
        row[c] = statistics.median(times[c]) if c in times else None
    row["rounds_us"] = times
    # correctness, first copy
    w, w8, f8 = layers[0]
    ref8 = x.double() @ w8.dequantized_weight(torch.float64).t()
    y8 = w8(x)
    row["w8a8_rel_err"] = rel_err(y8, ref8)
    row["w8a8_vs_reference_kernel"] = rel_err(y8, w8a8_int8_linear(x, w8).double())
    if fp8_ok:
        reff = x.double() @ f8.dequantized_weight(torch.float64).t()
        yf = f8(x)
        row["fp8_rel_err"] = rel_err(yf, reff)
        row["fp8_vs_reference_kernel"] = rel_err(yf, fp8_linear(x, f8).double())
    if device.type == "cuda":  # the CUDA path's activation codes (Triton or not) are PyTorch's, bit for bit
        from lowbit.kernels.cuda_w8a8 import quantize_input
        qa, sa = quantize_input(x, None, fp8=False)
        qb, sb = int8_per_token(x)
        row["int8_codes_equal"] = bool(torch.equal(qa, qb) and torch.equal(sa, sb))
        if fp8_ok:
            qa, sa = quantize_input(x, None, fp8=True)
            qb, sb = fp8_per_token(x)
            row["fp8_codes_equal"] = bool(torch.equal(qa.view(torch.uint8), qb.view(torch.uint8)) and torch.equal(sa, sb))
    row["max_rel_err"] = max(v for k, v in row.items() if k.endswith("_rel_err") and v is not None)
    for col in ("lowbit_w8a8_us", "lowbit_fp8_us"):
        if row.get(col):
            row[col.replace("_us", "_speedup")] = row["bf16_us"] / row[col]
    return row


def table(rows: list[dict]) -> str:
    head = ["K×N", "M", "bf16 µs", "w8a8 µs", "×bf16", "int_mm µs", "fp8 µs", "×bf16", "scaled_mm µs", "max rel err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt="{:.1f}"):
        return "–" if v is None else fmt.format(v)
    for r in rows:
        lines.append("| " + " | ".join([f"{r['K']}×{r['N']}", str(r["M"]), f(r["bf16_us"]), f(r["lowbit_w8a8_us"]),
                                        f(r.get("lowbit_w8a8_speedup"), "{:.2f}×"), f(r["int_mm_us"]),
                                        f(r["lowbit_fp8_us"]), f(r.get("lowbit_fp8_speedup"), "{:.2f}×"),
                                        f(r["scaled_mm_us"]), f(r["max_rel_err"], "{:.2e}")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry", action="store_true", help="small shapes and batches (smoke check)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=None)
    ap.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in kn.split("x")) for kn in s.split(",")],
                    default=None, help="weight shapes as KxN,KxN (default: the issue's 4096x14336,8192x28672)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="times every column this many times, alternating, and reports medians (default 3)")
    ap.add_argument("--no-triton", action="store_true",
                    help="PyTorch ops for activation quantization and the int8 epilogue (no Triton kernels)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --dry for a smoke check")
    shapes = DRY_SHAPES if a.dry else (a.shapes or SHAPES)
    batches = a.batches or (DRY_BATCHES if a.dry else BATCHES)
    notes: list[str] = []
    import_lowbit(notes)
    if a.no_triton:
        from lowbit.kernels import cuda_w8a8
        cuda_w8a8._TRITON[:] = [None]
        notes.append("--no-triton: activation quantization and the int8 epilogue as PyTorch ops")
    elif device.type == "cuda":
        from lowbit.kernels import cuda_w8a8
        notes.append(f"triton kernels: {'yes' if cuda_w8a8._triton() is not None else 'no (import failed)'}")
        if cuda_w8a8._triton() is not None:
            from lowbit.kernels import triton_int8_mm
            notes.append("int8 TMA tiles: " + json.dumps(
                {"wide": vars(triton_int8_mm.WIDE_TILES), "narrow": vars(triton_int8_mm.NARROW_TILES)})
                + " (wide where they fill half the SMs, K split where even narrow ones do not)")
    for n in notes:
        log(n)
    rows = []
    for K, N in shapes:
        weight_bytes = K * N  # int8 / fp8
        copies = 1 if device.type == "cpu" else max(1, min(4, math.ceil(L2_ROTATE_BYTES / weight_bytes)))
        layers = make_layers(K, N, copies, device, seed=K + N)
        for M in batches:
            r = measure(K, N, M, layers, device, a.rounds if device.type == "cuda" else 1)
            rows.append(r)
            log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        del layers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = a.out / "no-triton" if a.no_triton else a.out
    log(f"writing {out / 'w8a8_kernels.json'}")
    record(out, "w8a8_kernels", "W8A8 / FP8 linear layers vs bf16 F.linear", "w8a8_kernels.py",
           sys.argv[1:] if argv is None else argv, table(rows), device.type, notes=notes, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
