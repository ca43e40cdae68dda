from .dispatch import register_kernel, run, select_kernel
from . import triton_register  # noqa: F401  (registers the CUDA weight-only kernel, lazily)

__all__ = ["register_kernel", "run", "select_kernel"]
