"""compressed-tensors rows for the weight-and-activation modules (io/compressed_tensors.py's
scheme registry): W8A8 int8 is ``int-quantized``, FP8 is ``float-quantized``, as llm-compressor
writes them (its ``W8A8`` / ``FP8_DYNAMIC`` / ``FP8`` schemes) and vLLM runs them.

Per layer ``L``: ``L.weight`` (int8 or float8_e4m3fn, ``(out, in)``, unpacked), ``L.weight_scale
(out, 1)`` and, for static activations, ``L.input_scale (1,)`` float32; symmetric, so no zero
points. The config group's ``input_activations`` says ``strategy: token, dynamic: true`` (a scale
per token at run time) or ``strategy: tensor, dynamic: false`` (the stored ``input_scale``).
LLM.int8()'s outlier decomposition has no compressed-tensors scheme: such models go native.

Reading (a :class:`~lowbit.io.compressed_tensors.CTReader`): a config group becomes the
ActivationSpec it runs with (``spec_from_group``), each layer a :class:`CompressedTensorsActLinear`
shell that transformers fills under the checkpoint's own names and that turns into the lowbit
module after loading. llm-compressor's W8A8 and FP8 checkpoints load the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..formats.activations import ActivationSpec
from ..formats.fp8 import FP8_DTYPE
from ..modules import FP8Linear, LLMInt8Linear, W8A8Linear
from ..modules.act_linear import ActQuantLinear
from .compressed_tensors import (CompressedTensorsLinear, CTLayer, CTReader, NotExpressible,
                                 register_ct_reader, register_ct_scheme)

INT_FORMAT = "int-quantized"
FLOAT_FORMAT = "float-quantized"
_TYPE = {"int8": ("int", INT_FORMAT), "fp8": ("float", FLOAT_FORMAT)}


def _args(kind: str, strategy: str, dynamic: bool) -> dict:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=8, type=_TYPE[kind][0], symmetric=True, strategy=strategy,
                            dynamic=dynamic).model_dump()


def act_layer(name: str, m: ActQuantLinear, recipe=None) -> CTLayer:
    kind = m.act_kind
    scheme = {"weights": _args(kind, "channel", False),
              "input_activations": _args(kind, "tensor" if m.static else "token", not m.static),
              "output_activations": None, "format": _TYPE[kind][1]}
    tensors = {"weight": m.weight_codes, "weight_scale": m.weight_scale}
    if m.static:
        tensors["input_scale"] = m.input_scale
    if m.bias is not None:
        tensors["bias"] = m.bias
    return CTLayer(scheme, {k: v.detach().contiguous() for k, v in tensors.items()})


def llm_int8_layer(name: str, m: LLMInt8Linear, recipe=None) -> CTLayer:
    raise NotExpressible(f"{name} is LLM.int8() (outlier columns in float), which compressed-tensors "
                         f"cannot express")


register_ct_scheme(W8A8Linear, act_layer)
register_ct_scheme(FP8Linear, act_layer)
register_ct_scheme(LLMInt8Linear, llm_int8_layer)


# ---- reading --------------------------------------------------------------------------------

def spec_from_group(group: dict, where: str) -> ActivationSpec:
    """A config group with ``input_activations`` → the ActivationSpec lowbit runs it with."""
    w, a = group.get("weights") or {}, group.get("input_activations") or {}
    kind = {"int": "int8", "float": "fp8"}.get(w.get("type"))
    ok = (kind is not None and a.get("type") == w.get("type") and w.get("num_bits") == a.get("num_bits") == 8
          and w.get("symmetric", True) and a.get("symmetric", True) and w.get("strategy") == "channel"
          and not group.get("output_activations"))
    dynamic = a.get("dynamic") in (True, "true")
    if not ok or (dynamic and a.get("strategy") != "token") or (not dynamic and a.get("strategy") != "tensor"):
        raise InputError(f"{where}: compressed-tensors scheme weights={_brief(w)} inputs={_brief(a)} "
                         f"is not one lowbit runs (8-bit int or float, symmetric, per-channel weights, "
                         f"inputs per token dynamic or per tensor static)")
    return ActivationSpec(kind=kind, dynamic=dynamic)


def _brief(args: dict) -> str:
    keys = ("type", "num_bits", "symmetric", "strategy", "dynamic")
    return "{" + ", ".join(f"{k}={args.get(k)}" for k in keys if k in args) + "}"


def inspect_rows(table: dict) -> list[dict]:
    """``lowbit inspect`` rows of the int-quantized / float-quantized layers of a checkpoint, read
    from its safetensors header ``table`` (name -> {dtype, shape}): an 8-bit ``L.weight`` beside
    ``L.weight_scale``."""
    from ..formats.fp8 import FP8_ROWS
    from ..modules.w8a8_linear import WEIGHT_SPEC

    rows = []
    for key, t in table.items():
        name = key.removesuffix(".weight")
        if key == name or t["dtype"] not in ("I8", "F8_E4M3") or f"{name}.weight_scale" not in table:
            continue
        fp8 = t["dtype"] == "F8_E4M3"
        acts = ActivationSpec(kind="fp8" if fp8 else "int8", dynamic=f"{name}.input_scale" not in table)
        rows.append({"name": name, "shape": [int(t["shape"][0]), int(t["shape"][1])], "bits": 8,
                     "group_size": -1, "sym": True, "format": (FP8_ROWS if fp8 else WEIGHT_SPEC).label(),
                     "activations": acts.label,
                     "tensors": ("weight", "weight_scale", "input_scale")})
    return rows


class CompressedTensorsActLinear(CompressedTensorsLinear):
    """One int-quantized / float-quantized layer's tensors as stored (``weight``, ``weight_scale``,
    static ``input_scale``, ``bias``), until :meth:`to_quant_linear` makes the lowbit module."""

    def __init__(self, out_features: int, in_features: int, activations: ActivationSpec, bias: bool,
                 dtype: torch.dtype, device=None):
        nn.Module.__init__(self)
        self.out_features, self.in_features, self.activations = out_features, in_features, activations
        codes = FP8_DTYPE if activations.kind == "fp8" else torch.int8
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=codes, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=dtype, device=device))
        if not activations.dynamic:
            self.register_buffer("input_scale", torch.ones(1, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    def to_quant_linear(self, name: str = "layer") -> ActQuantLinear:
        from ..modules.factory import ACT_MODULES

        m = ACT_MODULES[self.activations.kind].empty(
            self.in_features, self.out_features, self.activations, self.bias is not None,
            dtype=self.weight_scale.dtype, device=self.weight.device)
        m.weight_codes.copy_(self.weight)
        m.weight_scale.copy_(self.weight_scale.reshape(m.weight_scale.shape))
        if not self.activations.dynamic:
            m.set_input_scale(self.input_scale.float())
        if self.bias is not None:
            m.bias.data.copy_(self.bias.detach())
        return m


register_ct_reader(CTReader(formats=(INT_FORMAT, FLOAT_FORMAT), spec_type=ActivationSpec,
                            layer_spec=spec_from_group, empty_layer=CompressedTensorsActLinear))
