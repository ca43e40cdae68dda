"""The AWQ "GEMM" checkpoint layout (``quant_method: "awq"``, ``version: "gemm"``), as AutoAWQ
writes it and vLLM and transformers read it.

Per quantized linear ``L`` (4-bit only, ``G`` inputs per group):

- ``L.qweight`` int32 ``(in, out/8)``: the codes packed along the *output* dimension, eight to a
  word, in AWQ's interleaved order: nibble ``i`` (bits ``4i..4i+3``) of word ``c`` holds output
  column ``8c + ORDER[i]`` with ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`` (the order its GEMM kernel's
  dequantization unpacks in).
- ``L.qzeros`` int32 ``(in/G, out/8)``: the zero points ``z`` (no offset), packed the same way.
- ``L.scales`` float16 ``(in/G, out)``.
- ``L.bias`` when the layer has one.

``w[o, k] = (q[k, o] − z[k // G, o]) · s[k // G, o]``.

The format has one format for the whole model (``bits``, ``group_size``, ``zero_point``) and a
list of modules left in float (``modules_to_not_convert``); per-layer overrides, per-channel and
per-tensor scales cannot be expressed. A symmetric lowbit model is written with
``zero_point: false`` *and* explicit ``qzeros`` of 8, so kernels that always read ``qzeros``
compute the same weights. Scales are float16 (see :mod:`lowbit.io.gptq_layout`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import FormatSpec, pack, unpack
from .files import CheckpointError
from .gptq_layout import scales_f16
from .layers import check_tensor, float_linear_names, group_by_format, quantized_modules, require_tensors

METHOD = "awq"
BITS = 4
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column ORDER[i]
_TENSORS = ("qweight", "qzeros", "scales")


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """``values (rows, out)`` in [0, 16) → int32 ``(rows, out/8)`` in AWQ's interleaved order."""
    rows, cols = values.shape
    interleaved = values.reshape(rows, cols // 8, 8)[..., list(ORDER)].reshape(rows, cols)
    return pack(interleaved, BITS)


def unpack_columns(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_columns`: int32 ``(rows, out/8)`` → int32 ``(rows, out)``."""
    rows = words.shape[0]
    nibbles = unpack(words, BITS, words.shape[1] * 8).reshape(rows, -1, 8)
    inverse = [ORDER.index(j) for j in range(8)]
    return nibbles[..., inverse].reshape(rows, -1).to(torch.int32)


# ---- writing ---------------------------------------------------------------------------------

def why_not_expressible(model: nn.Module) -> str | None:
    layers = quantized_modules(model)
    if not layers:
        return "the model has no quantized layers"
    groups = group_by_format(layers)
    if len(groups) > 1:
        return "it mixes several formats, and the AWQ layout has one format for the whole model"
    spec = groups[0][0]
    if spec.kind != "int" or spec.bits != BITS or spec.group_size <= 0:
        return f"the AWQ GEMM layout holds 4-bit codes with group scales, not {spec.label()}"
    for name, m in layers.items():
        if m.out_features % 8:
            return f"{name} has {m.out_features} outputs; AWQ packs outputs eight to a word"
    return None


def layer_tensors(m) -> dict[str, torch.Tensor]:
    """One QuantLinear's AWQ tensors (without the module prefix)."""
    zeros = m.weight_zero if m.weight_zero is not None else torch.full_like(
        m.weight_scale, 1 << (BITS - 1), dtype=torch.int32)
    t = {"qweight": pack_columns(m.codes().t().to(torch.int32)),
         "qzeros": pack_columns(zeros.t().to(torch.int32)),
         "scales": scales_f16(m.weight_scale).t()}
    if m.bias is not None:
        t["bias"] = m.bias.detach()
    return {k: v.contiguous() for k, v in t.items()}


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = dict(model.state_dict())
    for name, m in quantized_modules(model).items():
        for k in m.state_dict():
            sd.pop(f"{name}.{k}", None)
        sd.update({f"{name}.{k}": v for k, v in layer_tensors(m).items()})
    return sd


def quantization_config(model: nn.Module, recipe=None) -> dict:
    spec = group_by_format(quantized_modules(model))[0][0]
    return {"quant_method": METHOD, "bits": BITS, "group_size": spec.group_size,
            "zero_point": not spec.sym, "version": "gemm",
            "modules_to_not_convert": float_linear_names(model, skip=()) or None}


# ---- reading ---------------------------------------------------------------------------------

def check_config(qc: dict, where: str) -> None:
    """A one-line CheckpointError unless ``qc`` is an AWQ config lowbit reads (4-bit GEMM)."""
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size"))
    version = str(qc.get("version", "gemm")).lower()
    if bits != BITS or version != "gemm":
        raise CheckpointError(f"{where}: quantization method 'awq' {version} with bits {bits!r} is not "
                              f"supported (lowbit reads the 4-bit GEMM layout)")
    if not isinstance(group, int) or group <= 0:
        raise CheckpointError(f"{where}: quantization method 'awq' with group_size {group!r} is not "
                              f"supported (a positive group size is needed)")


def spec_for(qc: dict, name: str) -> FormatSpec | None:
    """The one format of an AWQ checkpoint; None for a module in ``modules_to_not_convert``."""
    if any(skip in name for skip in qc.get("modules_to_not_convert") or ()):
        return None
    check_config(qc, name)
    return FormatSpec(bits=BITS, sym=not qc.get("zero_point", True),
                      group_size=qc.get("group_size", qc.get("q_group_size")))


def to_native(name: str, tensors: dict[str, torch.Tensor], spec: FormatSpec, version: int = 0):
    """One layer's AWQ tensors → lowbit's native tensors ``(out, in, {buffer: tensor})``."""
    require_tensors(name, tensors, _TENSORS, METHOD)
    qweight, qzeros, scales = (tensors[k] for k in _TENSORS)
    if qweight.dim() != 2:
        raise CheckpointError(f"{name}.qweight must be 2-D, got shape {list(qweight.shape)}")
    in_f, out_f = qweight.shape[0], qweight.shape[1] * 8
    n_groups = in_f // spec.group_size if in_f % spec.group_size == 0 else -1
    check_tensor(name, "qweight", qweight, (in_f, out_f // 8), torch.int32)
    check_tensor(name, "qzeros", qzeros, (n_groups, out_f // 8), torch.int32)
    check_tensor(name, "scales", scales, (n_groups, out_f), None)
    codes = unpack_columns(qweight).t().contiguous()
    zeros = unpack_columns(qzeros).t().contiguous()
    native = {"weight_packed": pack(codes, BITS), "weight_scale": scales.t().float().contiguous()}
    if spec.sym:
        if not bool((zeros == 1 << (BITS - 1)).all()):
            raise CheckpointError(f"{name}: AWQ config says zero_point false but qzeros are not 8")
    else:
        native["weight_zero"] = zeros
    if "bias" in tensors:
        native["bias"] = tensors["bias"]
    return out_f, in_f, native
