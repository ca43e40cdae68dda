from .dispatch import register_kernel, run, select_kernel

__all__ = ["register_kernel", "run", "select_kernel"]
