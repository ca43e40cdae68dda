"""The GPTQ checkpoint layout (``quant_method: "gptq"``), as GPTQModel and vLLM read it.

Per quantized linear ``L`` with ``in`` inputs, ``out`` outputs, group size ``G`` (``G = in`` for
per-channel, written as ``group_size: -1``):

- ``L.qweight`` int32 ``(ceil(in·bits/32), out)``: the codes packed along the *input* dimension,
  element ``k`` of a column at bit ``k·bits`` of a dense LSB-first bitstream (for 2/4/8 bits:
  word ``k // (32/bits)``, shift ``bits·(k mod 32/bits)``; 3 bits cross word boundaries the same
  way GPTQ's own 3-bit packer does). So ``qweight`` is lowbit's ``weight_packed`` transposed.
- ``L.qzeros`` int32 ``(n_groups, ceil(out·bits/32))``: the zero points, packed the same way
  along the *output* dimension.
- ``L.scales`` float16 ``(n_groups, out)``.
- ``L.g_idx`` int32 ``(in,)``: the group of each input channel, ``k // G``.
- ``L.bias`` when the layer has one.

``w[o, k] = (q[k, o] − z[g_idx[k], o]) · s[g_idx[k], o]``.

Zero-point convention, by ``checkpoint_format``:

- ``"gptq"`` (format version 1, what AutoGPTQ wrote and every consumer reads, vLLM included):
  ``qzeros`` holds ``z − 1`` (masked to ``bits`` bits), and readers add the 1 back. A zero point
  of 0 cannot be stored (it would read back as ``2^bits``); such layers are refused with a
  pointer to version 2. Symmetric layers store ``2^(bits−1) − 1``.
- ``"gptq_v2"`` (GPTQModel's internal format): ``qzeros`` holds ``z`` itself.

lowbit writes version 1 by default (``format="gptq"``) and version 2 on request
(``format="gptq-v2"``). Scales are stored as float16, as the format prescribes; a model whose
scales are float32 loses their last bits (quantize with ``scale_dtype: float16`` for an export
that reads back bit for bit). On import the float16 scales are widened (exactly) to the model's
dtype, so the loaded spec has no ``scale_dtype``. lowbit's act-order uses static groups, so
``g_idx`` is always the trivial ``k // G`` and ``desc_act`` is false; a file with any other
``g_idx`` (act-order without static groups) is refused on import: its groups are not contiguous.

Per-layer formats are GPTQModel's ``dynamic`` overrides (also read by vLLM): ``"+:^name$"``
with the layer's ``bits``/``group_size``/``sym``; linears inside the blocks that stay in float
get ``"-:^name$"``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .. import __version__
from ..formats import FormatSpec, pack, packed_width, unpack
from .files import CheckpointError
from .layers import check_tensor, float_linear_names, group_by_format, quantized_modules, require_tensors

METHOD = "gptq"
VERSIONS = {"gptq": 1, "gptq-v2": 2}  # lowbit format name -> GPTQ format version
_CHECKPOINT_FORMAT = {1: "gptq", 2: "gptq_v2"}
_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def zero_offset(version: int) -> int:
    return 1 if version == 1 else 0


def scales_f16(scale: torch.Tensor) -> torch.Tensor:
    """Scales as the GPTQ and AWQ layouts store them (round to nearest float16)."""
    return scale.detach().to(torch.float16)


def no_group_reason(name: str, spec: FormatSpec) -> str | None:
    if spec.kind != "int":
        return f"{name} uses {spec.label()}, and the GPTQ and AWQ layouts hold integer codes only"
    if spec.granularity == "tensor":
        return f"{name} is quantized per tensor, which the GPTQ and AWQ layouts cannot hold"
    return None


# ---- writing ---------------------------------------------------------------------------------

def why_not_expressible(model: nn.Module, version: int = 1) -> str | None:
    layers = quantized_modules(model)
    if not layers:
        return "the model has no quantized layers"
    for name, m in layers.items():
        reason = no_group_reason(name, m.spec)
        if reason:
            return reason
        if version == 1 and m.weight_zero is not None and bool((m.weight_zero == 0).any()):
            return (f"{name} has a zero point of 0, which GPTQ format version 1 cannot store "
                    f"(it stores zero − 1); use the gptq-v2 format")
    return None


def layer_tensors(m, version: int = 1) -> dict[str, torch.Tensor]:
    """One QuantLinear's GPTQ tensors (without the module prefix)."""
    spec = m.spec
    group = spec.group_size if spec.group_size > 0 else m.in_features
    zeros = m.weight_zero if m.weight_zero is not None else torch.full_like(
        m.weight_scale, 1 << (spec.bits - 1), dtype=torch.int32)
    stored_zeros = (zeros.to(torch.int32) - zero_offset(version)) & spec.qmax
    t = {"qweight": m.weight_packed.t(),
         "qzeros": pack(stored_zeros.t().contiguous(), spec.bits),
         "scales": scales_f16(m.weight_scale).t(),
         "g_idx": torch.arange(m.in_features, dtype=torch.int32) // group}
    if m.bias is not None:
        t["bias"] = m.bias.detach()
    return {k: v.contiguous() for k, v in t.items()}


def state_dict(model: nn.Module, version: int = 1) -> dict[str, torch.Tensor]:
    sd = dict(model.state_dict())
    for name, m in quantized_modules(model).items():
        for k in m.state_dict():
            sd.pop(f"{name}.{k}", None)
        sd.update({f"{name}.{k}": v for k, v in layer_tensors(m, version).items()})
    return sd


def _format_fields(spec: FormatSpec) -> dict:
    return {"bits": spec.bits, "group_size": spec.group_size, "sym": spec.sym}


def quantization_config(model: nn.Module, recipe=None, version: int = 1) -> dict:
    """config.json's ``quantization_config``: the largest format group is the default, the
    others (and the float linears of the blocks) are ``dynamic`` overrides."""
    groups = group_by_format(quantized_modules(model))
    default = groups[0][0]
    dynamic = {}
    for spec, names in groups[1:]:
        dynamic.update({f"+:^{re.escape(n)}$": _format_fields(spec) for n in sorted(names)})
    dynamic.update({f"-:^{re.escape(n)}$": {} for n in float_linear_names(model)})
    act_order = bool(getattr(getattr(recipe, "rounder", None), "act_order", False))
    config = {"quant_method": METHOD, **_format_fields(default),
              "desc_act": False,  # codes are stored in input order: g_idx is k // G
              "static_groups": act_order, "true_sequential": True, "lm_head": False,
              "checkpoint_format": _CHECKPOINT_FORMAT[version], "format": _CHECKPOINT_FORMAT[version],
              "pack_dtype": "int32", "meta": {"quantizer": [f"lowbit:{__version__}"]}}
    if dynamic:
        config["dynamic"] = dynamic
    return config


# ---- reading ---------------------------------------------------------------------------------

def version_of(qc: dict) -> int:
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    versions = {v: k for k, v in _CHECKPOINT_FORMAT.items()}
    if fmt not in versions:
        raise CheckpointError(f"GPTQ checkpoint_format {fmt!r} is not supported "
                              f"(supported: {', '.join(versions)})")
    return versions[fmt]


def check_config(qc: dict, where: str) -> None:
    """A one-line CheckpointError unless ``qc`` is a GPTQ config lowbit reads."""
    missing = [k for k in ("bits", "group_size") if not isinstance(qc.get(k), int)]
    if missing:
        raise CheckpointError(f"{where}: quantization method 'gptq' config has no integer {missing[0]!r}")
    version_of(qc)
    spec_for(qc, "")


def spec_for(qc: dict, name: str) -> FormatSpec | None:
    """The layer's format from the default fields and the first matching ``dynamic`` rule;
    None if a ``-:`` rule leaves it in float."""
    fields = {k: qc.get(k) for k in ("bits", "group_size", "sym")}
    for pattern, override in (qc.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern[:2] in ("+:", "-:") else pattern
        if re.match(regex, name):
            if negative:
                return None
            fields.update({k: v for k, v in (override or {}).items() if k in fields})
            break
    try:
        return FormatSpec(bits=int(fields["bits"]), sym=bool(fields["sym"] if fields["sym"] is not None else True),
                          group_size=int(fields["group_size"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"GPTQ config for {name or 'its layers'}: {e}") from None


def to_native(name: str, tensors: dict[str, torch.Tensor], spec: FormatSpec, version: int):
    """One layer's GPTQ tensors → lowbit's native tensors ``(out, in, {buffer: tensor})``."""
    require_tensors(name, tensors, _TENSORS, METHOD)
    qweight, qzeros, scales, g_idx = (tensors[k] for k in _TENSORS)
    if qweight.dim() != 2 or g_idx.dim() != 1:
        raise CheckpointError(f"{name}: GPTQ qweight must be 2-D and g_idx 1-D, got "
                              f"{tuple(qweight.shape)} and {tuple(g_idx.shape)}")
    out_f, in_f = qweight.shape[1], g_idx.numel()
    group = spec.group_size if spec.group_size > 0 else in_f
    n_groups = in_f // group if in_f % group == 0 else -1
    check_tensor(name, "qweight", qweight, (packed_width(in_f, spec.bits), out_f), torch.int32)
    check_tensor(name, "qzeros", qzeros, (n_groups, packed_width(out_f, spec.bits)), torch.int32)
    check_tensor(name, "scales", scales, (n_groups, out_f), None)
    if not torch.equal(g_idx.long(), torch.arange(in_f) // group):
        raise CheckpointError(f"{name}: GPTQ g_idx is not k // group_size (act-order without static "
                              f"groups); lowbit supports contiguous groups only")
    zeros = (unpack(qzeros, spec.bits, out_f).to(torch.int32) + zero_offset(version)).t().contiguous()
    native = {"weight_packed": qweight.t().contiguous(), "weight_scale": scales.t().float().contiguous()}
    if spec.sym:
        if not bool((zeros == 1 << (spec.bits - 1)).all()):
            raise CheckpointError(f"{name}: GPTQ config says sym but the zero points are not "
                                  f"{1 << (spec.bits - 1)}")
    else:
        native["weight_zero"] = zeros
    if "bias" in tensors:
        native["bias"] = tensors["bias"]
    return out_f, in_f, native
