"""Kernel benchmark for weight-only QuantLinear on one GPU: one script, one run.

    PYTHONPATH=src:.whl/gemlite-0.6.0.post2 python3 bench/kernels.py --out $OUT

Measures a device-to-device copy (the bandwidth ceiling), then for each weight shape K×N and
batch M times bf16 ``F.linear``, ``torch._weight_int4pack_mm`` (g128), gemlite 0.6 W4A16 (asym
g128, if importable), and lowbit's Triton W4A16 (asym g128) and W8A16 (sym per-channel) through
the CUDA dispatch, and the W8A8 layers (int8 and E4M3 dynamic per-token, per-channel weights, as a
model runs them: input pass + GEMM; ``bench/w8a8_kernels.py``'s layers) beside the bare
``torch._int_mm`` and ``torch._scaled_mm`` on already quantized inputs. Every column is timed twice:
- ``graph``: replayed from a CUDA graph, the op repeated over enough weight copies that they do
  not fit in L2 (so the weights stream from HBM, as in a real model's decode step);
- ``eager``: ``triton.testing.do_bench`` (L2 flushed between calls, Python launch included).
Correctness: relative error (Frobenius) of each column against a float64 dequantize-then-matmul
reference of the same codes. Writes ``<out>/kernels.json`` (schema in shared/BENCHMARK.md) and
prints a short table last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]  # (K, N)
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
GROUP = 128
L2_ROTATE_BYTES = 192 << 20  # weight bytes a graph replay cycles through (H100 L2: 50 MB)


def import_lowbit(notes: list) -> None:
    """Import lowbit; if its package __init__ fails on this machine (it pulls in transformers
    integrations), load the subpackages the kernels need without it."""
    try:
        import lowbit  # noqa: F401
    except Exception as e:
        import types

        notes.append(f"import lowbit failed ({type(e).__name__}: {e}); loaded kernels without it")
        for name in [m for m in sys.modules if m == "lowbit" or m.startswith("lowbit.")]:
            del sys.modules[name]
        pkg = types.ModuleType("lowbit")
        pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "src" / "lowbit")]
        sys.modules["lowbit"] = pkg


def env_prefix() -> str:
    """The switches set for this run (lowbit's, and inductor's PDL), as they prefix its command line."""
    on = [f"{k}={os.environ[k]}" for k in ("LOWBIT_FRAG_LAYOUT", "LOWBIT_PDL", "TORCHINDUCTOR_ENABLE_PDL")
          if k in os.environ]
    return "".join(f"{w} " for w in on)


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------ timing

def capture_graph(fns: list, inner: int) -> "torch.cuda.CUDAGraph":
    """One CUDA graph running every fn in ``fns`` ``inner`` times, warmed up on a side stream
    (as capture requires) and replayed once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            for f in fns:
                f()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def graph_us(fns: list, est_us: float) -> float:
    """Median µs per call: one CUDA graph runs every fn in ``fns`` (distinct weight copies)
    ``inner`` times; replayed several times, timed with events."""
    inner = max(1, min(50, int(3000 / max(est_us * len(fns), 1.0))))
    graph = capture_graph(fns, inner)
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (inner * len(fns)))
    del graph
    return statistics.median(times)


def eager_us(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")) * 1e3


def rough_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / 3 * 1e6


def copy_bandwidth_tbps() -> float:
    n = 1 << 30  # 1 GiB each way
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    import triton.testing

    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=20, rep=200, return_mode="median")
    return 2 * n / (ms * 1e-3) / 1e12


# ------------------------------------------------------------------ the columns

def make_codes(n: int, k: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, device="cuda", dtype=torch.uint8)
    scale = (torch.rand(n, k // GROUP, generator=g, device="cuda") * 0.01 + 0.002).bfloat16()
    zero = torch.randint(0, 16, (n, k // GROUP), generator=g, device="cuda", dtype=torch.int32)
    return codes, scale, zero


def lowbit_w4(codes, scale, zero):
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats import FormatSpec
    from lowbit.modules import QuantLinear

    spec = FormatSpec(bits=4, sym=False, group_size=GROUP)
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec)).eval()


def lowbit_w8(n, k, seed):
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.formats import FormatSpec
    from lowbit.modules import QuantLinear

    g = torch.Generator(device="cuda").manual_seed(seed)
    spec = FormatSpec(bits=8, sym=True, group_size=-1)
    codes = torch.randint(0, 256, (n, k), generator=g, device="cuda", dtype=torch.uint8)
    scale = (torch.rand(n, 1, generator=g, device="cuda") * 0.001 + 0.0002).bfloat16()
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, None, spec)).eval()


def int4pack(codes, scale, zero):
    """torch's tinygemm layout: w = (q - 8)·scale + zero_f, so zero_f = (8 - z)·scale."""
    packed = ((codes[:, ::2] << 4) | codes[:, 1::2]).contiguous()
    w = torch._convert_weight_to_int4pack(packed, 8)
    zf = (8 - zero.float()) * scale.float()
    sz = torch.stack([scale.float(), zf], -1).transpose(0, 1).contiguous().bfloat16()  # (K/g, N, 2)
    return w, sz


def gemlite_w4(codes, scale, zero):
    from gemlite.helper import A16Wn

    return A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(
        codes, scale, zero.bfloat16(), W_nbits=4, group_size=GROUP)


# ------------------------------------------------------------------ one shape

def bench_shape(k: int, n: int, copy_tbps: float, have_gemlite: bool, rows: list, notes: list):
    from lowbit.kernels.triton_weight_only import TUNE_LOG, _TUNED, batch_bucket

    log(f"== K={k} N={n}")
    w4_bytes = n * k // 2 + 2 * (n * k // GROUP) * 2  # codes + bf16 scale + zero (as tinygemm/gemlite)
    bf16_bytes = n * k * 2
    copies_bf16 = max(1, math.ceil(L2_ROTATE_BYTES / bf16_bytes))
    copies_w4 = max(1, math.ceil(L2_ROTATE_BYTES / w4_bytes))
    copies_w8 = max(1, math.ceil(L2_ROTATE_BYTES / (n * k)))

    codes, scale, zero = make_codes(n, k, seed=k + n)
    w4 = [lowbit_w4(codes, scale, zero)] + [lowbit_w4(*make_codes(n, k, seed=k + n + i))
                                            for i in range(1, copies_w4)]
    w64 = w4[0].dequantized_weight(torch.float64)
    wbf = [w4[0].dequantized_weight(torch.bfloat16)] + [
        torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(1, copies_bf16)]
    w8 = [lowbit_w8(n, k, seed=7 + i) for i in range(copies_w8)]
    w8_64 = w8[0].dequantized_weight(torch.float64)
    tiny = [int4pack(codes, scale, zero)] + [int4pack(*make_codes(n, k, seed=k + n + i))
                                             for i in range(1, copies_w4)]
    from w8a8_kernels import make_layers  # (bf16, W8A8Linear, FP8Linear) triples

    a8 = make_layers(k, n, copies_w8, torch.device("cuda"), seed=k + n)
    a8_64 = [m.dequantized_weight(torch.float64) for m in a8[0][1:]]
    gem = None
    if have_gemlite:
        try:
            gem = [gemlite_w4(codes, scale, zero)] + [gemlite_w4(*make_codes(n, k, seed=k + n + i))
                                                      for i in range(1, copies_w4)]
        except Exception as e:
            notes.append(f"gemlite K={k} N={n}: {type(e).__name__}: {e}")
            gem = None

    for m in BATCHES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref4 = x.double() @ w64.T
        ref8 = x.double() @ w8_64.T
        cols = {
            "bf16_us": ([lambda w=w: F.linear(x, w) for w in wbf], ref4),
            "int4pack_us": ([lambda t=t: torch._weight_int4pack_mm(x, t[0], GROUP, t[1])
                             for t in tiny], ref4),
            "lowbit_w4a16_us": ([lambda q=q: q(x) for q in w4], ref4),
            "lowbit_w8a16_us": ([lambda q=q: q(x) for q in w8], ref8),
        }
        if gem is not None:
            cols["gemlite_w4a16_us"] = ([lambda gl=gl: gl(x) for gl in gem], ref4)
        # W8A8: the reference multiplies the dequantized weights by the unquantized input, so these
        # errors include the activations' quantization (int8 ~1e-2, E4M3 ~3e-2)
        from lowbit.kernels.activations import fp8_per_token, int8_per_token

        cols["lowbit_w8a8_us"] = ([lambda m=m: m(x) for _, m, _ in a8], x.double() @ a8_64[0].T)
        cols["lowbit_fp8_us"] = ([lambda m=m: m(x) for _, _, m in a8], x.double() @ a8_64[1].T)
        if m > 16:  # _int_mm's own limit; the int8 layer pads below it
            q8, s8 = int8_per_token(x)
            cols["int_mm_us"] = ([lambda a=a: torch._int_mm(q8, a[1].weight_codes.t()) for a in a8], None)
        if m % 16 == 0:  # _scaled_mm's
            qf, sf = fp8_per_token(x)
            sf = sf.contiguous()
            cols["scaled_mm_us"] = ([lambda a=a: torch._scaled_mm(
                qf, a[2].weight_codes.t(), scale_a=sf, scale_b=a[2].weight_scale.float().reshape(1, -1),
                out_dtype=torch.bfloat16) for a in a8], None)
        graph_row = {"timing": "graph", "K": k, "N": n, "M": m, "group_size": GROUP}
        eager_row = dict(graph_row, timing="eager")
        errs = {}
        for name, (fns, ref) in cols.items():
            try:
                with torch.no_grad():
                    out = fns[0]()  # also tunes lowbit's dispatch for this bucket
                    torch.cuda.synchronize()
                    if ref is not None:  # (the bare int8/E4M3 GEMMs have no reference of their own)
                        errs[name.replace("_us", "")] = float((out.double() - ref).norm() / ref.norm())
                    est = rough_us(fns[0])
                    graph_row[name] = graph_us(fns, est)
                    eager_row[name] = eager_us(fns[0])
            except Exception as e:
                notes.append(f"{name} K={k} N={n} M={m}: {type(e).__name__}: {str(e)[-400:]}")
                graph_row[name] = eager_row[name] = None
        floor = (w4_bytes + 2 * m * (k + n)) / (copy_tbps * 1e12) * 1e6
        floor8 = (n * k + 2 * n + 2 * m * (k + n)) / (copy_tbps * 1e12) * 1e6
        chosen = {}
        for bits, key_bits in (("w4a16", 4), ("w8a16", 8)):
            for key, cfg in _TUNED.items():
                if key[1] == key_bits and key[4] == k and key[5] == n and key[7] == batch_bucket(m):
                    chosen[bits] = cfg.label()
                    chosen[bits + "_candidates_us"] = {
                        lbl: round(v, 2) for lbl, v in TUNE_LOG.get(key, {}).items()}
        lowbit_errs = [v for c, v in errs.items() if c in ("lowbit_w4a16", "lowbit_w8a16")]
        for row in (graph_row, eager_row):
            row.update({
                "floor_us": floor, "floor8_us": floor8,
                "max_rel_err": max(lowbit_errs) if lowbit_errs else None,
                "rel_err": errs, "lowbit_kernel": chosen,
            })
            for col in ("gemlite_w4a16_us", "lowbit_w8a8_us", "lowbit_fp8_us", "scaled_mm_us", "int_mm_us"):
                row.setdefault(col, None)
        rows += [graph_row, eager_row]
        g = graph_row
        log(f"  M={m:5d} graph bf16 {fmt(g.get('bf16_us'))} int4pack {fmt(g.get('int4pack_us'))} "
            f"gemlite {fmt(g.get('gemlite_w4a16_us'))} lowbit-w4 {fmt(g.get('lowbit_w4a16_us'))} "
            f"lowbit-w8 {fmt(g.get('lowbit_w8a16_us'))} w8a8 {fmt(g.get('lowbit_w8a8_us'))} "
            f"fp8 {fmt(g.get('lowbit_fp8_us'))} floor {floor:.1f} | "
            f"err {max(lowbit_errs) if lowbit_errs else float('nan'):.2e} | "
            f"{chosen.get('w4a16')} / {chosen.get('w8a16')}")
    del w4, w8, wbf, tiny, gem, a8
    torch.cuda.empty_cache()


def fmt(v):
    return "   —  " if v is None else f"{v:7.1f}"


def summary(rows: list) -> str:
    lines = ["timing=graph, µs (×bf16 = bf16 time / lowbit time)",
             f"{'K×N':>12} {'M':>5} {'bf16':>8} {'int4pk':>8} {'gemlite':>8} {'lb-w4':>8} "
             f"{'×bf16':>6} {'%floor':>6} {'lb-w8':>8} {'×bf16':>6} {'err':>8}"]
    for r in rows:
        if r["timing"] != "graph":
            continue
        b, w4, w8 = r.get("bf16_us"), r.get("lowbit_w4a16_us"), r.get("lowbit_w8a16_us")
        sp4 = f"{b / w4:6.2f}" if b and w4 else "   —  "
        sp8 = f"{b / w8:6.2f}" if b and w8 else "   —  "
        pf = f"{100 * r['floor_us'] / w4:6.0f}" if w4 else "   —  "
        err = f"{r['max_rel_err']:8.1e}" if r.get("max_rel_err") is not None else "    —   "
        lines.append(f"{r['K']:>5}×{r['N']:<6} {r['M']:>5} {fmt(b):>8} {fmt(r.get('int4pack_us')):>8} "
                     f"{fmt(r.get('gemlite_w4a16_us')):>8} {fmt(w4):>8} {sp4} {pf} {fmt(w8):>8} "
                     f"{sp8} {err}")
    return "\n".join(lines)


def render_markdown(d: dict) -> str:
    """The Markdown table of a kernels.json document (both timing modes)."""
    f = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"# Kernels: weight-only QuantLinear on {d['device']}", "",
        f"- torch {d['torch']}, triton {d['triton']}, gemlite {d['gemlite']}; device clock "
        f"{d['date']}; copy ceiling {d['copy_tbps']:.2f} TB/s (read + write)",
        f"- W4: {d['w4_format']}; W8: {d['w8_format']}; activations bf16",
        f"- command: `{d['command']}`",
        "- `graph`: CUDA-graph replay, weights rotated over copies larger than L2; `eager`: "
        "`triton.testing.do_bench`, L2 flushed, Python launch included",
        "- floor: 4-bit weights + bf16 scale and zero per 128 + activations, read once at the copy "
        "ceiling. ×bf16 = bf16 time / lowbit time. err: max relative error of the lowbit columns vs "
        "a float64 dequantize-then-matmul reference (per-column errors in the JSON)",
        "- lowbit columns go through the CUDA dispatch; the W4 kernel it chose is in its column",
        "- W8A8 / FP8: lowbit's int8 and E4M3 layers (dynamic per-token inputs, per-channel weights; "
        "input pass + GEMM), `_int_mm` / `_scaled_mm` the bare GEMMs on already quantized inputs; "
        "their errors (against the unquantized input, so with the inputs' rounding) are in the JSON",
        "",
    ]
    for timing in ("graph", "eager"):
        lines += [f"## timing = {timing} (µs)", "",
                  "| K×N | M | bf16 | int4pack | gemlite W4 | lowbit W4 | ×bf16 | % floor | lowbit W8 "
                  "| ×bf16 | err | W4 kernel | W8A8 | ×bf16 | `_int_mm` | FP8 | ×bf16 | `_scaled_mm` |",
                  "|" + " --- |" * 18]
        for r in d["rows"]:
            if r["timing"] != timing:
                continue
            b, w4, w8 = r["bf16_us"], r["lowbit_w4a16_us"], r["lowbit_w8a16_us"]
            ratio = lambda a, c: "—" if not a or not c else f"{a / c:.2f}"  # noqa: E731
            floor = "—" if not w4 else f"{100 * r['floor_us'] / w4:.0f}%"
            err = "—" if r.get("max_rel_err") is None else f"{r['max_rel_err']:.1e}"
            lines.append(
                f"| {r['K']}×{r['N']} | {r['M']} | {f(b)} | {f(r.get('int4pack_us'))} | "
                f"{f(r.get('gemlite_w4a16_us'))} | {f(w4)} | {ratio(b, w4)} | {floor} | {f(w8)} | "
                f"{ratio(b, w8)} | {err} | {r.get('lowbit_kernel', {}).get('w4a16', '')} | "
                f"{f(r.get('lowbit_w8a8_us'))} | {ratio(b, r.get('lowbit_w8a8_us'))} | {f(r.get('int_mm_us'))} | "
                f"{f(r.get('lowbit_fp8_us'))} | {ratio(b, r.get('lowbit_fp8_us'))} | {f(r.get('scaled_mm_us'))} |")
        lines.append("")
    if d.get("notes"):
        lines += ["## notes", ""] + [f"- {n}" for n in d["notes"]] + [""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x4096,8192x28672 (K×N)")
    ap.add_argument("--render", metavar="JSON", help="only write JSON's Markdown table beside it")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(render_markdown(json.loads(src.read_text())))
        return 0
    shapes = SHAPES if args.shapes == "all" else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    import triton

    have_gemlite, notes = False, []
    import_lowbit(notes)
    try:
        import gemlite

        have_gemlite = True
        gemlite_version = gemlite.__version__
    except Exception as e:
        gemlite_version = None
        notes.append(f"gemlite not importable: {type(e).__name__}: {e}")
    props = torch.cuda.get_device_properties(0)
    copy_tbps = copy_bandwidth_tbps()
    log(f"device {props.name}, {props.multi_processor_count} SMs; copy {copy_tbps:.2f} TB/s")
    doc = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__,
           "gemlite": gemlite_version, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "copy_tbps": copy_tbps,
           "w4_format": "int4 asym g128 (bf16 scales, int zeros)",
           "w8_format": "int8 sym per-channel (bf16 scales)",
           "command": env_prefix() + "PYTHONPATH=src:.whl/gemlite-0.6.0.post2 python3 bench/kernels.py"
                      + ("" if args.shapes == "all" else f" --shapes {args.shapes}") + " --out $OUT",
           "notes": notes, "rows": []}
    t0 = time.time()
    for k, n in shapes:
        try:
            bench_shape(k, n, copy_tbps, have_gemlite, doc["rows"], notes)
        except Exception as e:
            notes.append(f"shape K={k} N={n} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
        doc["seconds"] = time.time() - t0
        (out_dir / "kernels.json").write_text(json.dumps(doc, indent=1) + "\n")
    for note in notes:
        log("note:", note)
    log(summary(doc["rows"]))


if __name__ == "__main__":
    sys.exit(main())
