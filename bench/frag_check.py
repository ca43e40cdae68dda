"""Are frag configs exact and repeatable? Each runs three times against a float64 reference.

    PYTHONPATH=src python3 bench/frag_check.py

"bad" counts elements off by more than 2% of the mean |reference| (a few are bf16 rounding in
any kernel); "repeatable" whether three calls gave identical bits. The eight-warp 128 × 128
configs are refused by ``mma_frag`` now; ``bench/results/frag-check.txt`` is the run from before
that guard.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import lowbit_w4, make_codes  # noqa: E402

from lowbit.kernels.triton_layout import WeightLayout  # noqa: E402
from lowbit.kernels.triton_mma_frag import frag_copies, mma_frag  # noqa: E402
from lowbit.kernels.triton_weight_only import KernelConfig  # noqa: E402

CASES = [((4096, 14336), m, cfg) for m in (128, 256) for cfg in
         ((64, 128, 4, 3, 1), (128, 128, 4, 3, 1), (128, 128, 8, 3, 1), (128, 128, 8, 4, 1),
          (128, 256, 8, 3, 1))]
CASES += [(shape, m, cfg) for shape in ((4096, 14336), (14336, 4096)) for m in (1024, 4096)
          for cfg in ((128, 256, 8, 3, 1), (128, 256, 8, 4, 1), (128, 256, 8, 3, 2),
                      (64, 256, 4, 3, 1))]
layers = {}
for (k, n), m, (bn, bm, w, st, split) in CASES:
    if (k, n) not in layers:
        layers[(k, n)] = lowbit_w4(*make_codes(n, k, seed=3))
    layer = layers[(k, n)]
    lo = WeightLayout.of(layer)
    w64 = layer.dequantized_weight(torch.float64)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ w64.T
    cfg = KernelConfig("frag", block_n=bn, block_m=min(bm, 256), block_k=64, num_warps=w,
                       num_stages=st, split_k=split)
    try:
        outs = [mma_frag(x, lo, *frag_copies(lo, x.dtype), None, cfg).double() for _ in range(3)]
    except ValueError as e:  # a config mma_frag refuses
        print(f"{k}x{n} M={m} {cfg.label()}: refused ({e})")
        continue
    err = (outs[0] - ref).abs() / ref.abs().mean()
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    big = (err > 0.02).nonzero()
    rows, cols = sorted(set(big[:, 0].tolist()))[:8], sorted(set((big[:, 1] % 128).tolist()))[:8]
    print(f"{k}x{n} M={m} {cfg.label()}: rel {float((outs[0] - ref).norm() / ref.norm()):.2e} "
          f"max {float(err.max()):.2e} repeatable {same} bad {len(big)} rows {rows} cols {cols}")
