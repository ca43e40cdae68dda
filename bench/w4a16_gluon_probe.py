"""The Gluon W4A16 GEMM and bf16 ``F.linear`` on 4096x14336 at 1024 rows, a few calls each, for a
profiler to look at (where the large-batch kernel's time goes):

    PYTHONPATH=src ncu --set full -k regex:'_w4a16_mm_gluon|gemm' -c 4 python3 bench/w4a16_gluon_probe.py
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import lowbit_w4, make_codes  # noqa: E402

from lowbit.kernels import gluon_w4a16_mm as g  # noqa: E402
from lowbit.kernels.triton_layout import WeightLayout  # noqa: E402

k, n, m = 4096, 14336, int(sys.argv[1]) if len(sys.argv) > 1 else 1024
layer = lowbit_w4(*make_codes(n, k, seed=1))
lo = WeightLayout.of(layer)
w = layer.dequantized_weight(torch.bfloat16)
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
for _ in range(2):
    g.w4a16_mm_gluon(x, lo, None, 128, 256, 4, 16, 8)
    F.linear(x, w)
torch.cuda.synchronize()
print("done")
