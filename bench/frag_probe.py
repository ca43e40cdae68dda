"""One frag and one half2 call on 4096x14336 (M=1 and 16), for a profiler to look at.

    PYTHONPATH=src ncu --set full -k regex:'_mma_frag_kernel|_gemv_half2_kernel' python3 bench/frag_probe.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import lowbit_w4, make_codes  # noqa: E402

from lowbit.kernels.triton_layout import WeightLayout  # noqa: E402
from lowbit.kernels.triton_mma_frag import frag_meta, mma_frag, repack_frag  # noqa: E402
from lowbit.kernels.triton_weight_only import KernelConfig, run_config  # noqa: E402

k, n = 4096, 14336
layer = lowbit_w4(*make_codes(n, k, seed=1))
lo = WeightLayout.of(layer)
frag = repack_frag(lo.packed, n, k)
meta = frag_meta(lo, torch.bfloat16)
for m in (1, 16):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    cfg = KernelConfig("frag", block_n=64, block_m=16, block_k=64, split_k=4, num_warps=4,
                       num_stages=4)
    for _ in range(3):
        mma_frag(x, lo, frag, meta, None, cfg)
    if m == 1:
        h = KernelConfig("gemv_half2", block_n=32, block_k=256, unroll=2, split_k=2, num_warps=1,
                         num_stages=1, fuse_x=True)
        for _ in range(3):
            run_config(x, lo, None, h)
torch.cuda.synchronize()
print("done")
