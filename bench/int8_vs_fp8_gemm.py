"""Why lowbit's int8 GEMM trails its E4M3 GEMM on the same tiles at large M: clocks, power or code.

    PYTHONPATH=src python3 bench/int8_vs_fp8_gemm.py --out $OUT

The int8 and E4M3 rows go through the shipped dispatch (``int8_mm_scaled`` / ``fp8_mm_scaled`` in
``kernels/triton_int8_mm.py``): until 2026-11-24 23:05 both the same Triton TMA kernel (int32
accumulators for int8, float32 for E4M3) on the same tiles, since then int8 on the wide tiles
through the Gluon kernel (``kernels/gluon_w8a8_mm.py``, with the tail rule). For each weight shape and M, each kind runs as a CUDA
graph replayed back to back for about ``--seconds`` while ``nvidia-smi`` samples the SM clock, the
power draw and the active clock-event (throttle) reasons every 50 ms. Kinds alternate (int8,
E4M3, int8, E4M3, ...) so that drift in temperature or clocks hits both alike, and each runs on
three code distributions:

- ``gaussian``: codes of Gaussian weights and inputs quantized per row (what a model's layers see);
- ``uniform``: every code equally likely (the most bit toggling in the multipliers);
- ``tiny``: codes in {-1, 0, 1} (almost none).

``gluon`` rows: the same product through ``kernels/gluon_w8a8_mm.py`` called directly, whole
tiles without the tail rule (gaussian codes); its ``wgmma`` keeps one K step in flight for int8 too.

If int8 is slower because the board hits its power limit, its time follows the data (``tiny``
fast, ``uniform`` slow) and its samples show a lower SM clock with the power-cap reason set; if
the code is slower, the time does not follow the data and the clocks are equal. cuBLAS
(``torch._int_mm``, ``torch._scaled_mm``) runs beside it on the gaussian codes. Writes
``<out>/int8_vs_fp8_gemm.json`` and ``.md``; prints the table last.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import capture_graph  # noqa: E402
from run_record import record  # noqa: E402

POINTS = [(8192, 28672, 4096), (4096, 14336, 4096), (14336, 4096, 1024), (8192, 28672, 1024)]
L2_ROTATE_BYTES = 192 << 20
QUERIES = ("clocks.sm", "power.draw", "temperature.gpu", "clocks_event_reasons.active")
FALLBACK_QUERIES = ("clocks.sm", "power.draw", "temperature.gpu", "clocks_throttle_reasons.active")
# clock-event reason bits (nvml): 0x4 software power cap, 0x20 software thermal, 0x40 hardware
# thermal (slowdown), 0x80 hardware power brake
REASONS = {0x4: "sw-power", 0x8: "hw-slowdown", 0x20: "sw-thermal", 0x40: "hw-thermal", 0x80: "hw-power-brake"}


class Sampler:
    """``nvidia-smi`` in the background; ``window()`` returns the samples taken since ``start()``."""

    def __init__(self):
        self.samples, self.proc, self.fields = [], None, None
        for fields in (QUERIES, FALLBACK_QUERIES):
            proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                                     "-lms", "50"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(0.5)
            if proc.poll() is None:
                self.proc, self.fields = proc, fields
                break
        if self.proc is not None:
            threading.Thread(target=self._read, daemon=True).start()
        self.mark = 0

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == len(self.fields):
                self.samples.append(parts)

    def start(self):
        self.mark = len(self.samples)

    def window(self) -> dict:
        got = self.samples[self.mark:]
        if not got:
            return {"clock_mhz": None, "power_w": None, "temp_c": None, "reasons": []}

        def med(i):
            vals = [float(s[i]) for s in got if s[i].replace(".", "", 1).isdigit()]
            return statistics.median(vals) if vals else None
        bits = 0
        for s in got:
            try:
                bits |= int(s[3], 16)
            except ValueError:
                pass
        return {"clock_mhz": med(0), "power_w": med(1), "temp_c": med(2), "samples": len(got),
                "reasons": [name for bit, name in REASONS.items() if bits & bit]}

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()


def codes(kind: str, shape, dist: str, gen) -> torch.Tensor:
    dev = torch.device("cuda")
    if dist == "uniform":
        q = torch.randint(-127, 128, shape, generator=gen, device=dev, dtype=torch.int8)
        return q if kind == "int8" else (q.float() * (448.0 / 127.0)).to(torch.float8_e4m3fn)
    if dist == "tiny":
        q = torch.randint(-1, 2, shape, generator=gen, device=dev, dtype=torch.int8)
        return q if kind == "int8" else q.float().to(torch.float8_e4m3fn)
    x = torch.randn(shape, generator=gen, device=dev)
    if kind == "int8":
        return torch.round(x / (x.abs().amax(1, keepdim=True) / 127.0)).clamp(-127, 127).to(torch.int8)
    return (x / (x.abs().amax(1, keepdim=True) / 448.0)).to(torch.float8_e4m3fn)


def sustained(fns: list, seconds: float, sampler: Sampler) -> dict:
    """Replays one graph of ``fns`` back to back for about ``seconds``; µs per call (median of
    the replays) with the clock and power samples of that window."""
    inner = 10
    graph = capture_graph(fns, inner)
    sampler.start()
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / (inner * len(fns)))
    win = sampler.window()
    del graph
    return {"us": statistics.median(times), "replays": len(times), **win}


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default="gaussian,uniform,tiny,cublas,gluon",
                    help="which rows to run: code distributions, cublas, gluon")
    ap.add_argument("--points", default=",".join(f"{k}x{n}x{m}" for k, n, m in POINTS),
                    help="KxNxM,... (weight in x out features, rows)")
    a = ap.parse_args(argv)
    from lowbit.kernels.triton_int8_mm import fp8_mm_scaled, int8_mm_scaled

    sampler = Sampler()
    rows = []
    for point in a.points.split(","):
        K, N, M = (int(v) for v in point.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(K + N + M)
        copies = max(1, min(4, math.ceil(L2_ROTATE_BYTES / (K * N))))
        xs = torch.rand(M, device="cuda") * 1e-2 + 1e-3
        ws = [torch.rand(N, device="cuda") * 1e-3 + 1e-4 for _ in range(copies)]
        data = {}
        for kind in ("int8", "fp8"):
            for dist in ("gaussian", "uniform", "tiny"):
                data[kind, dist] = (codes(kind, (M, K), dist, gen), [codes(kind, (N, K), dist, gen) for _ in range(copies)])
        fns = {}
        for (kind, dist), (q, w) in data.items():
            mm = int8_mm_scaled if kind == "int8" else fp8_mm_scaled
            fns[kind, dist] = [lambda q=q, wi=wi, s=s, mm=mm: mm(q, wi, xs, s, None, torch.bfloat16)
                               for wi, s in zip(w, ws)]
        q8, w8 = data["int8", "gaussian"]
        qf, wf = data["fp8", "gaussian"]
        one = torch.ones((), device="cuda")
        fns["int8", "cublas"] = [lambda wi=wi: torch._int_mm(q8, wi.t()) for wi in w8]
        fns["fp8", "cublas"] = [lambda wi=wi: torch._scaled_mm(qf, wi.t(), one, one, out_dtype=torch.bfloat16)
                                for wi in wf]
        from lowbit.kernels import gluon_w8a8_mm as glu
        if glu.available():  # the Gluon kernel: same tiles, one K step's MMAs kept in flight
            for kind, (q, w) in (("int8", (q8, w8)), ("fp8", (qf, wf))):
                fns[kind, "gluon"] = [lambda q=q, wi=wi, s=s: glu.w8a8_mm_gluon(
                    q, wi, xs, s, None, torch.empty(M, N, device="cuda", dtype=torch.bfloat16)) for wi, s in zip(w, ws)]
        order = [(k, "gluon") for k in ("int8", "fp8") if (k, "gluon") in fns] + [("int8", "gaussian"), ("fp8", "gaussian"), ("int8", "uniform"), ("fp8", "uniform"),
                 ("int8", "tiny"), ("fp8", "tiny"), ("int8", "cublas"), ("fp8", "cublas")]
        order = [o for o in order if o[1] in a.data.split(",")]
        for rnd in range(a.rounds):
            for kind, dist in order:
                r = sustained(fns[kind, dist], a.seconds, sampler)
                r.update({"K": K, "N": N, "M": M, "kind": kind, "data": dist, "round": rnd,
                          "tops": 2 * M * N * K / (r["us"] * 1e-6) / 1e12})
                rows.append(r)
                print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        del data, fns
        torch.cuda.empty_cache()
    sampler.stop()

    lines = ["| K×N, M | kind | data | µs (per round) | TOPS | SM MHz | power W | reasons |", "|---|---|---|---|---|---|---|---|"]
    seen = []
    for r in rows:
        key = (r["K"], r["N"], r["M"], r["kind"], r["data"])
        if key in seen:
            continue
        seen.append(key)
        same = [s for s in rows if (s["K"], s["N"], s["M"], s["kind"], s["data"]) == key]

        def f(v, fmt):
            return "–" if v is None else format(v, fmt)
        lines.append(f"| {r['K']}×{r['N']}, {r['M']} | {r['kind']} | {r['data']} | "
                     f"{' / '.join(f(s['us'], '.1f') for s in same)} | {statistics.median(s['tops'] for s in same):.0f} | "
                     f"{' / '.join(f(s['clock_mhz'], '.0f') for s in same)} | {' / '.join(f(s['power_w'], '.0f') for s in same)} | "
                     f"{', '.join(sorted({x for s in same for x in s['reasons']})) or '–'} |")
    table = "\n".join(lines)
    record(a.out, "int8_vs_fp8_gemm", "int8 against E4M3 on lowbit's TMA GEMM: clocks and power", "int8_vs_fp8_gemm.py",
           sys.argv[1:] if argv is None else argv, table, rows=rows, sampler_fields=list(sampler.fields or ()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
