"""What the online Hadamard rotation of a layer's inputs (``online_hadamard``, QuaRot R4) costs on
the GPU: a static W8A8 int8 ``down_proj`` with and without it, beside bf16 ``F.linear``.

    PYTHONPATH=src python3 bench/hadamard_cost.py --out $OUT          # H100
    .venv/bin/python bench/hadamard_cost.py --device cpu --dry --out /tmp/h  # smoke check

Shapes: Llama-3-8B's ``down_proj`` (in 14336 = Paley 28 ⊗ Sylvester 512, out 4096) and SmolLM2's
(in 1536 = 12 ⊗ 128, out 576); batches M = 1, 16, 256, 4096. Each column is a CUDA graph over
enough weight copies to stream them from memory (``kernels.graph_us``), median of 7 replays. The
rotation runs as lowbit runs it (on a GPU the fused Triton kernel, ``kernels/triton_hadamard.py``)
and, beside it, as the PyTorch matmuls it replaced (a sign pass and two small matmuls); the
rotation alone is timed too. Also checks both against the dense float64 ``x Q`` reference. Writes
``<out>/hadamard_cost.json`` and ``.md`` and prints the table last.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_us  # noqa: E402
from run_record import record  # noqa: E402
from w8a8_kernels import import_lowbit  # noqa: E402

SHAPES = [(14336, 4096), (1536, 576)]  # (in, out): down_proj of Llama-3-8B and of SmolLM2
BATCHES = [1, 16, 256, 4096]
DRY_SHAPES, DRY_BATCHES = [(96, 32)], [1, 5]
STREAM_BYTES = 192 << 20


def log(*a):
    print(*a, flush=True)


def make_layers(K: int, N: int, copies: int, device, seed: int):
    """``copies`` of (bf16 weight, static W8A8Linear, the same layer rotating its inputs)."""
    from lowbit.algorithms.quantized_weight import QuantizedWeight
    from lowbit.algorithms.hadamard import random_signs
    from lowbit.modules.input_hadamard import attach_input_hadamard
    from lowbit.modules.w8a8_linear import WEIGHT_SPEC, W8A8Linear

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(copies):
        w = (torch.randn(N, K, generator=g, device=device) * 0.02).bfloat16()
        scale = (w.float().abs().amax(1, keepdim=True) / 127.5).bfloat16()
        codes = (torch.round(w.float() / scale.float()) + 128).clamp(0, 255).to(torch.uint8)
        qw = QuantizedWeight(codes, scale, None, WEIGHT_SPEC)
        plain = W8A8Linear.from_quantized(qw, input_scale=torch.tensor([0.02])).to(device).eval()
        rotated = W8A8Linear.from_quantized(qw, input_scale=torch.tensor([0.02])).to(device).eval()
        attach_input_hadamard(rotated, random_signs(K, seed + i))
        out.append((w, plain, rotated))
    return out


def timed(fns: list, device) -> float:
    if device.type == "cuda":
        fns[0]()
        torch.cuda.synchronize()
        t = time.perf_counter()
        fns[0]()
        torch.cuda.synchronize()
        return graph_us(fns, (time.perf_counter() - t) * 1e6)
    t = time.perf_counter()
    for f in fns:
        f()
    return (time.perf_counter() - t) / len(fns) * 1e6


@contextlib.contextmanager
def matmul_rotation():
    """The rotation as PyTorch matmuls (the path before the fused kernel) while inside."""
    from lowbit.modules import input_hadamard

    fused = input_hadamard._fused_kernel
    input_hadamard._fused_kernel = lambda: None
    try:
        yield
    finally:
        input_hadamard._fused_kernel = fused


def rotation_err(rotated, x, want) -> float:
    got = []
    h = rotated.register_forward_pre_hook(lambda _m, args: got.append(args[0]))
    rotated(x)
    h.remove()
    return float((got[0].double() - want.double()).norm() / want.double().norm())


@torch.no_grad()
def measure(K: int, N: int, M: int, layers, device) -> dict:
    from lowbit.algorithms.hadamard import randomized_hadamard
    from lowbit.modules.input_hadamard import SIGNS, rotate

    x = torch.randn(M, K, device=device).bfloat16()
    w, plain, rotated = layers[0]
    Q = randomized_hadamard(getattr(rotated, SIGNS)).to(device)
    want = (x.double() @ Q).to(torch.bfloat16)  # what the hook must hand the layer
    row = {"in": K, "out": N, "M": M,
           "bf16_us": timed([lambda w=w: F.linear(x, w) for w, _, _ in layers], device),
           "w8a8_static_us": timed([lambda m=m: m(x) for _, m, _ in layers], device),
           "w8a8_static_hadamard_us": timed([lambda m=m: m(x) for _, _, m in layers], device),
           "rotate_us": timed([lambda m=m: rotate(x, m) for _, _, m in layers], device),
           "rotation_rel_err": rotation_err(rotated, x, want)}
    with matmul_rotation():
        row["w8a8_static_hadamard_matmul_us"] = timed([lambda m=m: m(x) for _, _, m in layers], device)
        row["rotate_matmul_us"] = timed([lambda m=m: rotate(x, m) for _, _, m in layers], device)
        row["rotation_matmul_rel_err"] = rotation_err(rotated, x, want)
    row["hadamard_extra_us"] = row["w8a8_static_hadamard_us"] - row["w8a8_static_us"]
    row["hadamard_matmul_extra_us"] = row["w8a8_static_hadamard_matmul_us"] - row["w8a8_static_us"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| in×out | M | bf16 µs | W8A8 static µs | + Hadamard, fused kernel µs | + Hadamard, matmuls µs | "
             "rotation alone: fused / matmuls µs | ×bf16: none / fused / matmuls | rel err fused / matmuls |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bf16_us"]
        lines.append(f"| {r['in']}×{r['out']} | {r['M']} | {b:.1f} | {r['w8a8_static_us']:.1f} | "
                     f"{r['w8a8_static_hadamard_us']:.1f} | {r['w8a8_static_hadamard_matmul_us']:.1f} | "
                     f"{r['rotate_us']:.1f} / {r['rotate_matmul_us']:.1f} | "
                     f"{b / r['w8a8_static_us']:.2f}× / {b / r['w8a8_static_hadamard_us']:.2f}× / "
                     f"{b / r['w8a8_static_hadamard_matmul_us']:.2f}× | "
                     f"{r['rotation_rel_err']:.1e} / {r['rotation_matmul_rel_err']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry", action="store_true", help="a small shape and batches (smoke check)")
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    notes: list[str] = []
    import_lowbit(notes)
    device = torch.device(a.device)
    shapes, batches = (DRY_SHAPES, DRY_BATCHES) if a.dry else (SHAPES, BATCHES)
    rows = []
    for K, N in shapes:
        copies = 1 if a.dry else max(2, min(32, STREAM_BYTES // (K * N)))
        layers = make_layers(K, N, copies, device, seed=K)
        for M in batches:
            rows.append(measure(K, N, M, layers, device))
            log(json.dumps(rows[-1]))
        del layers
    record(a.out, "hadamard_cost", "Online Hadamard rotation of a static W8A8 layer's inputs: cost", "hadamard_cost.py",
           sys.argv[1:] if argv is None else argv, table(rows), device.type, notes=notes, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
