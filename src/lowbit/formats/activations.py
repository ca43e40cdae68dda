"""The activation spec: how a quantized linear's *input* is quantized at run time.

A recipe without one is weight-only. With one, every quantized linear becomes a W8A8 module
(modules/act_linear.py) of the spec's ``kind``:

- ``int8``: int8 weights (symmetric, per output row) × int8 activations, int32 accumulation;
- ``llm-int8``: the same with LLM.int8()'s decomposition, input columns holding a value of
  magnitude ``>= outlier_threshold`` multiplied in float (always per token, dynamic);
- ``fp8``: FP8 E4M3 weights (per output row) × E4M3 activations.

``dynamic``: one scale per token, computed from the token's absmax at run time (no calibration).
Otherwise one scale per tensor, fixed by calibration: ``observer`` (observers/) turns the
calibration inputs of each linear into its scale. Plain data, round-tripping through YAML/JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .spec import FormatError, FormatSpec

ACT_KINDS = ("int8", "llm-int8", "fp8")
_INT8_ROWS = FormatSpec(kind="int", bits=8, sym=True, group_size=-1)
_FP8_ROWS = FormatSpec(kind="fp8", bits=8, group_size=-1)


@dataclass(frozen=True)
class ActivationSpec:
    kind: str = "int8"
    dynamic: bool = True
    observer: str = "minmax"
    outlier_threshold: float = 6.0

    def __post_init__(self):
        if self.kind not in ACT_KINDS:
            raise FormatError(f"unknown activation kind {self.kind!r} (supported: {', '.join(ACT_KINDS)})")
        if not isinstance(self.dynamic, bool):
            raise FormatError(f"activations: dynamic must be true or false, got {self.dynamic!r}")
        if self.kind == "llm-int8" and not self.dynamic:
            raise FormatError("llm-int8 scales every token on its own: it has no static variant")
        if not isinstance(self.outlier_threshold, (int, float)) or not self.outlier_threshold >= 0:
            raise FormatError(f"activations: outlier_threshold must be >= 0, got {self.outlier_threshold!r}")
        from ..observers import OBSERVERS  # here, not at import: observers build on formats

        if self.observer not in OBSERVERS:
            raise FormatError(f"unknown observer {self.observer!r} (available: {', '.join(OBSERVERS)})")

    @property
    def weight_format(self) -> FormatSpec:
        """The only weight format the kind's module runs: 8 bits, one scale per output row."""
        return _FP8_ROWS if self.kind == "fp8" else _INT8_ROWS

    @property
    def needs_calibration(self) -> bool:
        return not self.dynamic

    @property
    def label(self) -> str:
        """The results schema's ``acts`` field: a8-dynamic, a8-static, fp8 (or fp8-static)."""
        if self.kind == "fp8":
            return "fp8" if self.dynamic else "fp8-static"
        return "a8-dynamic" if self.dynamic else "a8-static"

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "dynamic": self.dynamic}
        if not self.dynamic:
            d["observer"] = self.observer
        if self.kind == "llm-int8":
            d["outlier_threshold"] = self.outlier_threshold
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ActivationSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FormatError(f"unknown activation fields {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)
