"""The format spec: how one weight tensor's numbers are stored.

A spec is plain data (frozen, validated on construction, JSON round-trippable). Granularity is
one idea, the size of the block that shares a scale along the input dimension:
``group_size > 0`` is per-group, ``-1`` is per-channel (one block per output row) and ``0`` is
per-tensor (one block for the whole matrix).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import InputError

SUPPORTED_INT_BITS = (2, 3, 4, 8)
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
    # None: scales are stored in the weight's own dtype (what llm-compressor writes).
    scale_dtype: str | None = None

    def __post_init__(self):
        if self.kind != "int":
            raise FormatError(f"unknown format kind {self.kind!r} (supported: 'int')")
        # bool is an int and 4.0 == 4: both would pass a plain membership test and break later.
        if not _is_int(self.bits) or self.bits not in SUPPORTED_INT_BITS:
            raise FormatError(
                f"unsupported bits {self.bits}: integer formats support {list(SUPPORTED_INT_BITS)}"
            )
        if not _is_int(self.group_size) or self.group_size < -1:
            raise FormatError(
                f"group size must be a positive integer, -1 (per-channel) or 0 (per-tensor), "
                f"got {self.group_size!r}"
            )
        if not isinstance(self.sym, bool):
            raise FormatError(f"sym must be true or false, got {self.sym!r}")
        if self.scale_dtype not in (None, "float32", "float16", "bfloat16"):
            raise FormatError(f"unsupported scale dtype {self.scale_dtype!r}")

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

        A per-tensor block is the whole ``(out_features, in_features)`` matrix.
        """
        if self.group_size > 0:
            block = self.group_size
        elif self.group_size == PER_CHANNEL:
            block = in_features
        else:
            block = in_features * out_features
        extra = scale_bits + (0 if self.sym else self.bits)
        return self.bits + extra / block

    def label(self) -> str:
        g = {"group": f"g{self.group_size}", "channel": "per-channel", "tensor": "per-tensor"}
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
