"""What the Triton kernels need to know about a QuantLinear's buffers, read once per call.

No repacking: the kernels read ``weight_packed``, ``weight_scale`` and ``weight_zero`` exactly as
the module stores them (the compressed-tensors layout), so a checkpoint loads with no conversion.
The one exception is opt-in: with ``LOWBIT_FRAG_LAYOUT=1`` the ``frag`` kernel reads a second,
fragment-ordered copy made on first use (``triton_mma_frag``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

TRITON_BITS = (4, 8)  # codes that tile whole int32 words; 2/3-bit go to the reference kernel


@dataclass(frozen=True)
class WeightLayout:
    packed: torch.Tensor          # int32 (N, KW)
    scale: torch.Tensor           # (N or 1, n_groups), any float dtype
    zero: torch.Tensor | None     # int32 like scale, asymmetric only
    bits: int
    group_size: int               # > 0 group, -1 per-channel, 0 per-tensor
    n: int
    k: int

    @classmethod
    def of(cls, module) -> "WeightLayout":
        spec = module.spec
        return cls(module.weight_packed, module.weight_scale, module.weight_zero, spec.bits,
                   spec.group_size, module.out_features, module.in_features)

    @property
    def kw(self) -> int:
        return self.packed.shape[1]

    @property
    def has_zero(self) -> bool:
        return self.zero is not None

    @property
    def zero_or_dummy(self) -> torch.Tensor:
        # Triton needs a pointer even when HAS_ZERO is off; the kernel never reads it then.
        return self.zero if self.zero is not None else self.packed

    @property
    def stride_s(self) -> int:
        # Per-tensor scales are (1, 1): a zero row stride makes every row read the same value.
        return self.scale.stride(0) if self.scale.shape[0] > 1 else 0

    @property
    def stride_z(self) -> int:
        if self.zero is None:
            return 0
        return self.zero.stride(0) if self.zero.shape[0] > 1 else 0

    def block_k(self, cap: int) -> int:
        """The K tile: a power of two ≤ ``cap`` that divides the group (so a tile has one scale)."""
        if self.group_size <= 0:
            return cap
        bk = self.group_size & -self.group_size  # largest power of two dividing the group
        return min(bk, cap)

    def group_for(self, block_k: int) -> int:
        """Group size as the kernels use it: ``(tile·BK) // group`` is the scale column."""
        if self.group_size > 0:
            return self.group_size
        return -(-self.k // block_k) * block_k  # one group spanning every tile


def triton_supports(module, x: torch.Tensor) -> bool:
    """Whether the Triton kernels compute this layer for this input (else: reference kernel)."""
    spec = getattr(module, "spec", None)
    if spec is None or spec.kind != "int" or spec.bits not in TRITON_BITS:
        return False
    return layout_supported(WeightLayout.of(module), x)


def layout_supported(layout: WeightLayout, x: torch.Tensor) -> bool:
    """The same from the buffers alone (integer codes of a width the kernels read assumed)."""
    if layout.bits not in TRITON_BITS or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    if x.shape[-1] != layout.k or not layout.packed.is_contiguous():
        return False
    return layout.block_k(128) >= 16  # tl.dot needs K tiles of at least 16


def tma_rows(t: torch.Tensor) -> bool:
    """Whether the copy engine (TMA) can address ``t``'s rows: contiguous within a row, row stride
    and start 16-byte aligned."""
    return t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def inline_ptx_ok(x: torch.Tensor) -> bool:
    """NVIDIA GPUs run the kernels' inline PTX; the interpreter and ROCm run the same steps in
    plain Triton."""
    return x.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET") != "1"


def pdl_ok(x: torch.Tensor) -> bool:
    """Programmatic dependent launch (a kernel starting while the previous one drains): Hopper
    and later with a Triton that has grid dependency control; ``LOWBIT_PDL=0`` turns it off."""
    if not inline_ptx_ok(x) or os.environ.get("LOWBIT_PDL", "1") == "0":
        return False
    return _pdl_device(x.device.index if x.device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _pdl_device(index: int) -> bool:
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(x: torch.Tensor) -> dict:
    """Launch options of a kernel written for PDL (its ``PDL`` constexpr and ``launch_pdl``)."""
    return {"PDL": True, "launch_pdl": True} if pdl_ok(x) else {}
