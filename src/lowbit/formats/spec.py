"""The format spec: how one weight tensor's numbers are stored.

A spec is plain data (frozen, validated on construction, JSON round-trippable). Granularity is
one idea, the size of the block that shares a scale along the input dimension:
``group_size > 0`` is per-group, ``-1`` is per-channel (one block per output row) and ``0`` is
per-tensor (one block for the whole matrix).

Kinds: ``int`` (uniform integer grid, :mod:`lowbit.formats.integer`) and the lookup-table kinds
``nf`` (NormalFloat, :mod:`lowbit.formats.nf`) and ``fp`` (FP4 E2M1, :mod:`lowbit.formats.fp4`),
whose codes index a table of levels scaled by each block's absmax (:mod:`lowbit.formats.levels`).
Lookup-table formats are symmetric by construction (``sym`` is always true for them) and may
store their block scales double-quantized (``double_quant``, :mod:`lowbit.formats.double_quant`).
FP4 blocks may instead store their scales as 8-bit floats (:mod:`lowbit.formats.microscaling`):
``scale_dtype: e8m0`` (powers of two, MXFP4) or ``e4m3`` (FP8 times one float32 scale per tensor,
NVFP4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import InputError
from .double_quant import DQ_BITS, DQ_BLOCK

SUPPORTED_INT_BITS = (2, 3, 4, 8)
# Lookup-table kinds and the code widths their tables are defined for.
# fp8: FP8 E4M3, its 256 byte values as the table (formats/fp8.py).
LEVEL_KIND_BITS = {"nf": (4,), "fp": (4,), "fp8": (8,)}
KINDS = ("int", *LEVEL_KIND_BITS)
FLOAT_SCALE_DTYPES = ("float32", "float16", "bfloat16")
# Block scales coded as 8-bit floats, for kind "fp" (formats/microscaling.py): the MXFP4 and NVFP4 scales.
CODED_SCALE_DTYPES = {"e8m0": "mxfp4", "e4m3": "nvfp4"}
PER_CHANNEL = -1
PER_TENSOR = 0


class FormatError(InputError):
    """A format that cannot be built, or a tensor that does not fit one."""


@dataclass(frozen=True)
class FormatSpec:
    kind: str = "int"
    bits: int = 4
    sym: bool = False
    group_size: int = 64
    # None: scales are stored in the weight's own dtype (what llm-compressor writes); "e8m0" /
    # "e4m3": coded 8-bit block scales of kind fp (MXFP4 / NVFP4).
    scale_dtype: str | None = None
    # Lookup-table kinds only: block scales stored as 8-bit codes (formats/double_quant.py).
    double_quant: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FormatError(f"unknown format kind {self.kind!r} (supported: {', '.join(map(repr, KINDS))})")
        supported = SUPPORTED_INT_BITS if self.kind == "int" else LEVEL_KIND_BITS[self.kind]
        # bool is an int and 4.0 == 4: both would pass a plain membership test and break later.
        if not _is_int(self.bits) or self.bits not in supported:
            raise FormatError(
                f"unsupported bits {self.bits}: {self.kind} formats support {list(supported)}"
            )
        if not _is_int(self.group_size) or self.group_size < -1:
            raise FormatError(
                f"group size must be a positive integer, -1 (per-channel) or 0 (per-tensor), "
                f"got {self.group_size!r}"
            )
        if not isinstance(self.sym, bool):
            raise FormatError(f"sym must be true or false, got {self.sym!r}")
        if self.scale_dtype not in (None, *FLOAT_SCALE_DTYPES, *CODED_SCALE_DTYPES):
            raise FormatError(f"unsupported scale dtype {self.scale_dtype!r} (supported: "
                              f"{', '.join([*FLOAT_SCALE_DTYPES, *CODED_SCALE_DTYPES])})")
        if self.coded_scales and (self.kind != "fp" or self.group_size <= 0):
            raise FormatError(f"scale dtype {self.scale_dtype} ({CODED_SCALE_DTYPES[self.scale_dtype]}) "
                              f"codes the block scales of kind fp in groups (group_size > 0), "
                              f"not {self.kind} with group size {self.group_size}")
        if not isinstance(self.double_quant, bool):
            raise FormatError(f"double_quant must be true or false, got {self.double_quant!r}")
        if self.is_lookup:
            # Absmax scaling around an exact zero level: there is no zero point to store.
            object.__setattr__(self, "sym", True)
        elif self.double_quant:
            raise FormatError("double_quant applies to the block scales of nf and fp formats, not int")
        if self.double_quant and self.scale_dtype is not None:
            raise FormatError("double-quantized scales are 8-bit codes with float32 second-level "
                              "scales: leave scale_dtype unset")

    @property
    def is_lookup(self) -> bool:
        """Codes index a table of levels (nf, fp) rather than a uniform integer grid."""
        return self.kind != "int"

    @property
    def coded_scales(self) -> bool:
        """Block scales stored as 8-bit float codes (E8M0 or E4M3), decoded to float32."""
        return self.scale_dtype in CODED_SCALE_DTYPES

    @property
    def has_global_scale(self) -> bool:
        """One float32 scale per tensor divides the block scales (NVFP4's two-level scaling)."""
        return self.scale_dtype == "e4m3"

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def granularity(self) -> str:
        if self.group_size > 0:
            return "group"
        return "channel" if self.group_size == PER_CHANNEL else "tensor"

    def n_groups(self, in_features: int) -> int:
        return in_features // self.group_size if self.group_size > 0 else 1

    def check_fits(self, out_features: int, in_features: int, name: str = "weight") -> None:
        """Raise a FormatError naming the layer if the input dimension does not split into groups."""
        if self.group_size > 0 and in_features % self.group_size:
            raise FormatError(
                f"{name}: in_features {in_features} is not a multiple of group size "
                f"{self.group_size}; choose a group size that divides {in_features} "
                f"(e.g. {_divisors_hint(in_features)}) or -1 for per-channel"
            )

    def bits_per_weight(self, in_features: int, scale_bits: int = 16, out_features: int = 1) -> float:
        """Storage bits per weight: codes plus the scale (and zero) shared by each block.

        A per-tensor block is the whole ``(out_features, in_features)`` matrix. Double-quantized
        scales cost 8 bits per block plus a float32 per 256 blocks (NF4 at block 64: 4.127); the
        one float32 offset per matrix is left out (under 0.001 bits per weight for any real layer),
        as is NVFP4's float32 global scale. Coded (E8M0/E4M3) scales cost 8 bits per block.
        """
        if self.group_size > 0:
            block = self.group_size
        elif self.group_size == PER_CHANNEL:
            block = in_features
        else:
            block = in_features * out_features
        if self.double_quant:
            return self.bits + (DQ_BITS + 32 / DQ_BLOCK) / block
        if self.coded_scales:
            scale_bits = 8
        extra = scale_bits + (0 if self.sym else self.bits)
        return self.bits + extra / block

    def label(self) -> str:
        g = {"group": f"g{self.group_size}", "channel": "per-channel", "tensor": "per-tensor"}
        if self.is_lookup:
            name = {"nf": f"nf{self.bits}", "fp": f"fp{self.bits} e2m1", "fp8": "fp8 e4m3"}[self.kind]
            name = CODED_SCALE_DTYPES.get(self.scale_dtype, name)  # mxfp4, nvfp4
            return f"{name} {g[self.granularity]}" + (" dq" if self.double_quant else "")
        return f"int{self.bits} {'sym' if self.sym else 'asym'} {g[self.granularity]}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FormatSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FormatError(f"unknown format fields {sorted(unknown)}")
        return cls(**d)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _divisors_hint(n: int) -> str:
    options = [g for g in (32, 64, 96, 128, 192, 256) if n % g == 0]
    return ", ".join(str(g) for g in options) if options else "-1"
