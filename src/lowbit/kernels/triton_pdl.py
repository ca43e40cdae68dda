"""Grid dependency control for Triton kernels launched with programmatic dependent launch (PDL,
Hopper and later): ``gdc_wait`` blocks until the preceding kernel has finished and its writes are
visible, ``gdc_launch_dependents`` lets the next kernel launch while this one drains. Kernels call
them only under their ``PDL`` constexpr, which ``triton_layout.pdl_launch`` sets where
``pdl_ok`` holds, so an older Triton without them never compiles a call.
"""
from __future__ import annotations

try:  # Triton 3.3+
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: pdl_ok() is false there
    gdc_launch_dependents = gdc_wait = None

__all__ = ["gdc_launch_dependents", "gdc_wait"]
