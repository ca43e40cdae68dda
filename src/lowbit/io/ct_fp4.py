"""compressed-tensors rows for FP4 E2M1 weights (io/compressed_tensors.py's registries): MXFP4 is
``mxfp4-pack-quantized``, NVFP4 is ``nvfp4-pack-quantized``, as compressed-tensors 0.20 writes and
reads them (``compressors/mxfp4``, ``compressors/nvfp4``, the ``MXFP4A16`` / ``NVFP4A16`` presets).

Per quantized linear ``L``:

- ``L.weight_packed`` uint8 ``(out, in/2)``: the E2M1 bit patterns (sign, two exponent bits, one
  mantissa bit), element ``2i`` in the low nibble and ``2i+1`` in the high one
  (``nvfp4/helpers.pack_fp4_to_uint8``). lowbit's FP4 codes are those bit patterns, so this is
  the same nibbles regrouped from int32 words into bytes.
- ``L.weight_scale`` ``(out, in/group)``: uint8 E8M0 biased exponents (MXFP4, group 32) or
  ``float8_e4m3fn`` (NVFP4, group 16): QuantLinear's own buffer, unchanged.
- ``L.weight_global_scale`` float32 ``(1,)``, NVFP4 only: the block scales are divided by it.
- No ``weight_shape`` and no zero point (FP4 is symmetric only).

The config group's ``weights``: ``num_bits: 4, type: float, symmetric: true, dynamic: false``,
``strategy: group, group_size: 32, scale_dtype: torch.uint8`` (MXFP4) or ``strategy:
tensor_group, group_size: 16, scale_dtype: torch.float8_e4m3fn`` (NVFP4); its ``format`` (and the
top-level one, unless the model mixes formats) is the compressor's name. compressed-tensors picks
its MXFP4 compressor for group 32 only and NVFP4 for 16 only (``can_compress``), so FP4 with
other groups, or with float scales, has no scheme here and goes to the native layout. The
decoding is compressed-tensors' (``formats/microscaling.py`` states it), so its decompressor
and lowbit give the same weights.

Reading: a config group becomes its FormatSpec, each layer a :class:`CompressedTensorsFP4Linear`
shell that transformers fills under the checkpoint's names and that turns into a QuantLinear.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..formats import FormatSpec, pack
from ..formats.microscaling import E4M3_DTYPE
from ..modules import QuantLinear
from .compressed_tensors import (CompressedTensorsLinear, CTLayer, CTReader, NotExpressible,
                                 register_ct_reader, register_weight_only_kind)


@dataclass(frozen=True)
class FP4Scheme:
    """One compressed-tensors FP4 format and the lowbit scale dtype it holds."""

    scale_dtype: str         # lowbit's FormatSpec.scale_dtype
    group_size: int          # the only group compressed-tensors' compressor takes
    format: str
    strategy: str
    code_dtype: torch.dtype  # weight_scale's dtype
    ct_scale_dtype: str      # as QuantizationArgs serialises it

    @property
    def spec(self) -> FormatSpec:
        return FormatSpec(kind="fp", bits=4, group_size=self.group_size, scale_dtype=self.scale_dtype)


SCHEMES = {
    "e8m0": FP4Scheme("e8m0", 32, "mxfp4-pack-quantized", "group", torch.uint8, "torch.uint8"),
    "e4m3": FP4Scheme("e4m3", 16, "nvfp4-pack-quantized", "tensor_group", E4M3_DTYPE, "torch.float8_e4m3fn"),
}
BY_FORMAT = {s.format: s for s in SCHEMES.values()}
_KNOWN_TENSORS = {"weight_packed", "weight_scale", "weight_global_scale", "bias", "weight"}


def why_not(spec: FormatSpec) -> str | None:
    """None if compressed-tensors can hold an FP4 ``spec``, else why not."""
    scheme = SCHEMES.get(spec.scale_dtype)
    if spec.kind != "fp" or scheme is None:
        return (f"{spec.label()} has float block scales; compressed-tensors holds FP4 only as MXFP4 "
                f"(E8M0 scales, group 32) or NVFP4 (E4M3 scales, group 16)")
    if spec.group_size != scheme.group_size:
        return (f"{spec.label()}: compressed-tensors' {scheme.format} takes group "
                f"{scheme.group_size} only")
    return None


def weight_args(scheme: FP4Scheme) -> dict:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=4, type="float", symmetric=True, strategy=scheme.strategy,
                            group_size=scheme.group_size, dynamic=False,
                            scale_dtype=scheme.ct_scale_dtype).model_dump()


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``(out, in)`` → compressed-tensors' bytes ``(out, in/2)``, even elements low."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' bytes ``(out, in/2)`` → uint8 codes ``(out, in)``."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def fp4_layer(name: str, m: QuantLinear, recipe=None) -> CTLayer:
    reason = why_not(m.spec)
    if reason:
        raise NotExpressible(f"{name} uses {reason}")
    extra = set(m.state_dict()) - _KNOWN_TENSORS
    if extra:
        raise NotExpressible(f"{name} carries tensors compressed-tensors has no place for "
                             f"({', '.join(sorted(extra))})")
    scheme = SCHEMES[m.spec.scale_dtype]
    tensors = {"weight_packed": pack_nibbles(m.codes()), "weight_scale": m.weight_scale}
    if m.spec.has_global_scale:
        tensors["weight_global_scale"] = m.weight_global_scale
    if m.bias is not None:
        tensors["bias"] = m.bias
    body = {"weights": weight_args(scheme), "input_activations": None, "output_activations": None,
            "format": scheme.format}
    return CTLayer(body, {k: v.detach().contiguous() for k, v in tensors.items()})


register_weight_only_kind("fp", fp4_layer)


# ---- reading --------------------------------------------------------------------------------

def spec_from_group(group: dict, where: str) -> FormatSpec:
    """An ``mxfp4-`` / ``nvfp4-pack-quantized`` config group → the FormatSpec of its layers."""
    scheme = BY_FORMAT[group.get("format")]
    w = group.get("weights") or {}
    ok = (w.get("type") == "float" and w.get("num_bits") == 4 and w.get("symmetric", True)
          and w.get("strategy") == scheme.strategy and w.get("group_size") == scheme.group_size
          and w.get("scale_dtype") in (None, scheme.ct_scale_dtype) and not w.get("dynamic"))
    if not ok:
        raise InputError(f"{where}: {scheme.format} weights {_brief(w)} are not {scheme.format}'s "
                         f"(float, 4 bits, symmetric, strategy {scheme.strategy}, group "
                         f"{scheme.group_size}, scale dtype {scheme.ct_scale_dtype})")
    if group.get("input_activations") or group.get("output_activations"):
        raise InputError(f"{where}: {scheme.format} with quantized activations (W4A4) is not "
                         f"supported; lowbit runs FP4 weights only (W4A16)")
    return scheme.spec


def _brief(args: dict) -> str:
    keys = ("type", "num_bits", "symmetric", "strategy", "group_size", "scale_dtype", "dynamic")
    return "{" + ", ".join(f"{k}={args.get(k)}" for k in keys if k in args) + "}"


def inspect_rows(table: dict) -> list[dict]:
    """``lowbit inspect`` rows of the FP4 layers of a checkpoint, from its safetensors header
    ``table`` (name -> {dtype, shape}): a uint8 ``L.weight_packed`` beside ``L.weight_scale``."""
    rows = []
    for key, t in table.items():
        name = key.removesuffix(".weight_packed")
        scale = table.get(f"{name}.weight_scale")
        if key == name or t["dtype"] != "U8" or scale is None or scale["dtype"] not in ("U8", "F8_E4M3"):
            continue
        out_f, in_f = int(t["shape"][0]), 2 * int(t["shape"][1])
        spec = FormatSpec(kind="fp", bits=4, group_size=in_f // int(scale["shape"][1]),
                          scale_dtype="e8m0" if scale["dtype"] == "U8" else "e4m3")
        rows.append({"name": name, "shape": [out_f, in_f], "bits": 4, "group_size": spec.group_size,
                     "sym": True, "format": spec.label(),
                     "tensors": ("weight_packed", "weight_scale", "weight_global_scale")})
    return rows


class CompressedTensorsFP4Linear(CompressedTensorsLinear):
    """One MXFP4/NVFP4 layer's tensors as stored (``weight_packed`` bytes, coded ``weight_scale``,
    NVFP4's ``weight_global_scale``, ``bias``), until :meth:`to_quant_linear` makes the QuantLinear."""

    def __init__(self, out_features: int, in_features: int, spec: FormatSpec, bias: bool,
                 dtype: torch.dtype, device=None):
        nn.Module.__init__(self)
        spec.check_fits(out_features, in_features)
        self.out_features, self.in_features, self.spec = out_features, in_features, spec
        scheme = SCHEMES[spec.scale_dtype]
        kw = dict(device=device)
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, **kw))
        self.register_buffer("weight_scale", torch.zeros(
            out_features, spec.n_groups(in_features), dtype=scheme.code_dtype, **kw))
        if spec.has_global_scale:
            self.register_buffer("weight_global_scale", torch.ones(1, dtype=torch.float32, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, **kw)) if bias else None

    def to_quant_linear(self, name: str = "layer") -> QuantLinear:
        q = QuantLinear(self.in_features, self.out_features, self.spec, self.bias is not None,
                        dtype=self.bias.dtype if self.bias is not None else torch.float32,
                        device=self.weight_packed.device)
        q.weight_packed.copy_(pack(unpack_nibbles(self.weight_packed), 4))
        q.weight_scale.copy_(self.weight_scale)
        if self.spec.has_global_scale:
            q.weight_global_scale.copy_(self.weight_global_scale)
        if self.bias is not None:
            q.bias.data.copy_(self.bias.detach())
        return q


register_ct_reader(CTReader(formats=tuple(BY_FORMAT), spec_type=FormatSpec, layer_spec=spec_from_group,
                            empty_layer=CompressedTensorsFP4Linear))
