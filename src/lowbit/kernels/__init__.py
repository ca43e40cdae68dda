from .dispatch import register_kernel, run, select_kernel
from . import custom_op  # noqa: F401  (registers lowbit's custom operators for torch.compile)
from . import triton_register  # noqa: F401  (registers the CUDA weight-only kernel, lazily)
from . import cuda_w8a8  # noqa: F401  (registers the CUDA int8 / FP8 W8A8 kernels)

__all__ = ["register_kernel", "run", "select_kernel"]
