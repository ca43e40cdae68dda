"""lowbit's native layout: what compressed-tensors cannot express (Conv1D models, later NF4/FP4...).

Files: ``config.json`` (the model config plus ``quantization_config``, below), ``model.safetensors``
(or shards + index, as transformers writes them), ``recipe.yaml``, tokenizer files.

Tensors per quantized layer ``L`` (QuantLinear's own buffers, unchanged):
``L.weight_packed`` int32 ``(out, ceil(in·bits/32))`` unsigned codes, dense LSB-first bitstream;
``L.weight_scale`` ``(out, n_groups)`` (``(1, 1)`` per tensor); ``L.weight_zero`` int32 unsigned
zeros, asymmetric only; ``L.bias`` if any; and the sentinel ``L.weight``: an empty int8 tensor
of shape ``(0,)``. Lookup-table formats (``format: "nf"`` NF4, ``"fp"`` FP4 E2M1) store their
codes (table indices) the same way, 4-bit codes two per byte, low nibble first; with
``double_quant`` ``L.weight_scale`` is int8 codes of the block scales, beside float32
``L.weight_scale_scale`` (one per 256 block scales) and ``L.weight_scale_offset`` (one); with
``scale_dtype`` ``e8m0`` (MXFP4) it is uint8 exponents, with ``e4m3`` (NVFP4) float8_e4m3fn
beside float32 ``L.weight_global_scale`` (one).

``quantization_config``::

    {"quant_method": "lowbit", "layout": "native", "packing": "int32-lsb",
     "format": "int", "bits": 4, "group_size": 64, "sym": false, "scale_dtype": null,  # default format
     "method": "rtn", "ignore": [...], "overrides": [...], "recipe": {...},
     "groups": {"group_0": {"format": {FormatSpec},
                            "modules": {"model.layers.0.mlp.up_proj": [out, in], ...}}},
     "sentinel": "weight", "lowbit_version": "0.1.0"}

Loading it without lowbit imported fails loudly, by design of the sentinel. transformers 5.23
logs "Unknown quantization type, got lowbit ... we will skip the quantization", builds the float
model, finds each ``L.weight`` in the checkpoint with shape ``(0,)`` instead of ``(out, in)``,
prints a load report listing those keys as MISMATCH and raises ``RuntimeError: You set
`ignore_mismatched_sizes` to `False`, thus raising an error``. Only a caller who passes
``ignore_mismatched_sizes=True`` gets a model — with those layers randomly initialised, and the
report saying so. ``safetensors`` + ``load_state_dict(strict=True)`` fails on the unknown keys.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import __version__
from ..errors import InputError
from ..formats import FormatSpec
from ..formats.activations import ActivationSpec
from ..modules import QuantLinear
from ..modules.input_hadamard import input_hadamard_layers
from .layers import act_quantized_modules, group_by_format, lowbit_modules, quantized_modules

LAYOUT = "native"
SENTINEL = "weight"


def sentinel() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int8)


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = dict(model.state_dict())
    for name in lowbit_modules(model):
        sd[f"{name}.{SENTINEL}"] = sentinel()
    return sd


def _groups(model: nn.Module) -> list[tuple[FormatSpec, dict | None, list[str]]]:
    """``(weight format, activation spec dict or None, names)`` per group, the largest first.

    Weight-and-activation modules (W8A8, LLM.int8, FP8) keep their codes in ``L.weight_codes``
    (int8 or float8_e4m3fn, unpacked), ``L.weight_scale (out, 1)`` and, static, ``L.input_scale``;
    their group records ``"activations"`` (an ActivationSpec), which picks the module on load.
    """
    groups = [(spec, None, names) for spec, names in group_by_format(quantized_modules(model))]
    by_acts: dict[tuple, list[str]] = {}
    for name, m in act_quantized_modules(model).items():
        acts = m.activation_spec()
        by_acts.setdefault((m.spec, acts), []).append(name)
    groups += [(spec, acts.to_dict(), names) for (spec, acts), names in by_acts.items()]
    return sorted(groups, key=lambda g: -len(g[2]))


def quantization_config(model: nn.Module, recipe=None) -> dict:
    groups = _groups(model)
    if not groups:
        raise InputError("model has no lowbit quantized layers to save")
    layers = lowbit_modules(model)
    default = groups[0][0]
    recipe_dict = recipe.to_dict() if recipe is not None else None
    return {
        "quant_method": "lowbit",
        "layout": LAYOUT,
        "packing": "int32-lsb",
        **{k: v for k, v in default.to_dict().items() if k != "kind"},
        "format": default.kind,
        "method": recipe.method if recipe is not None else None,
        "ignore": list(recipe.ignore) if recipe is not None else [],
        "overrides": recipe_dict["overrides"] if recipe_dict else [],
        "recipe": recipe_dict,
        "groups": {
            f"group_{i}": {"format": spec.to_dict(), **({"activations": acts} if acts else {}),
                           "modules": {n: [layers[n].out_features, layers[n].in_features] for n in names}}
            for i, (spec, acts, names) in enumerate(groups)
        },
        # Layers that rotate their inputs online (``modules/input_hadamard.py``): name -> width;
        # their random signs are the tensor ``L.input_hadamard_signs``.
        **({"input_hadamard": rotating} if (rotating := input_hadamard_layers(model)) else {}),
        "sentinel": SENTINEL,
        "lowbit_version": __version__,
    }


def layer_specs(qc: dict) -> dict[str, FormatSpec]:
    """``module name -> FormatSpec`` from a native ``quantization_config``."""
    if qc.get("layout", LAYOUT) != LAYOUT:
        raise InputError(f"lowbit checkpoint layout {qc.get('layout')!r} is not {LAYOUT!r}")
    if qc.get("packing", "int32-lsb") != "int32-lsb":
        raise InputError(f"lowbit checkpoint packing {qc.get('packing')!r} is not supported")
    specs = {}
    for gname, g in (qc.get("groups") or {}).items():
        try:
            spec = FormatSpec.from_dict(g["format"])
        except (KeyError, TypeError) as e:
            raise InputError(f"lowbit checkpoint group {gname}: bad format ({e})") from None
        specs.update({name: spec for name in g.get("modules", {})})
    return specs


def layer_activations(qc: dict) -> dict[str, ActivationSpec]:
    """``module name -> ActivationSpec`` for the layers whose group quantizes inputs too."""
    acts = {}
    for gname, g in (qc.get("groups") or {}).items():
        if g.get("activations") is not None:
            try:
                spec = ActivationSpec.from_dict(g["activations"])
            except (TypeError, ValueError) as e:
                raise InputError(f"lowbit checkpoint group {gname}: bad activations ({e})") from None
            acts.update({name: spec for name in g.get("modules", {})})
    return acts


def empty_quant_linear(out_f: int, in_f: int, spec: FormatSpec, bias: bool, dtype: torch.dtype,
                       device=None, activations: ActivationSpec | None = None):
    """The module transformers fills from a native checkpoint (its buffers are the tensor names):
    a QuantLinear, or with ``activations`` the W8A8 module of their kind."""
    if activations is not None:
        from ..modules.factory import ACT_MODULES
        return ACT_MODULES[activations.kind].empty(in_f, out_f, activations, bias, dtype, device)
    return QuantLinear(in_f, out_f, spec, bias, dtype=dtype, device=device)
