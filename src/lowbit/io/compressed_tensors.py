"""compressed-tensors "pack-quantized": the layout llm-compressor writes and vLLM/transformers read.

Per quantized linear ``L`` (checked against compressed-tensors 0.20's own compressor,
``compressors/pack_quantized``):

- ``L.weight_packed`` int32 ``(out, ceil(in·bits/32))``: CT packs *signed* codes
  ``q_s = q - 2^(bits-1)`` by adding ``2^(bits-1)`` back and writing a dense LSB-first bitstream,
  so its words are exactly lowbit's packing of the unsigned codes ``q`` (a copy, no conversion).
- ``L.weight_scale`` in the scale dtype: ``(out, in/g)`` per group, ``(out, 1)`` per channel,
  ``(1,)`` per tensor.
- ``L.weight_zero_point`` (asymmetric only) holds signed zeros ``z - 2^(bits-1)``; per group and
  per channel it is packed like the codes but along dim 0: int32 ``(ceil(out·bits/32), n_groups)``;
  per tensor it is an unpacked int8 ``(1,)``. Symmetric formats store no zero point (CT's is 0,
  which is lowbit's implicit mid-point).
- ``L.weight_shape`` int64 ``[out, in]``.

Both sides dequantize as ``(q_s - z_s)·scale = (q - z)·scale``, so logits agree exactly.

The config block is built with compressed-tensors' own pydantic models and wrapped the way
``ModelCompressor.update_config`` does (``version``, ``quant_method``, ``sparsity_config``,
``transform_config``), keys sorted, as llm-compressor writes it. Checked against a checkpoint
llm-compressor 0.14 wrote for the same tiny model (W4 g32 asym, RTN min-max): identical tensor
names, shapes, dtypes and packed codes; its ``weights`` entry also lists ``observer`` (lowbit does
not use compressed-tensors' observers, so none is claimed) and null ``actorder``/``block_structure``
/``scale_dtype``, which compressed-tensors 0.20's serializer omits. One addition where needed:

``"dequantize": true`` for asymmetric group/channel formats. transformers 5.23 with
compressed-tensors 0.20 cannot load such checkpoints on its default path: it builds the compressed
layout on the meta device, where compressed-tensors' ``compress`` skips packing the zero point,
so the model expects ``weight_zero_point`` of shape ``(out, n_groups)`` and the load fails with a
size mismatch against the packed ``(ceil(out·bits/32), n_groups)`` (llm-compressor's own
W4A16_ASYM checkpoints fail the same way). With ``dequantize`` transformers decompresses each
layer while loading (``CompressedTensorsDequantize``), which handles the packed zero point. vLLM
reads only the keys it knows and ignores this one. That path decodes every layer with the
*first* config group's scheme, so asymmetric models with several formats cannot be expressed.

Only ``nn.Linear`` layers can be expressed: compressed-tensors cannot initialise transformers'
``Conv1D`` (GPT-2), so such models go to the native layout.

Which module becomes which scheme is a registry (:func:`register_ct_scheme`): a module type maps
to a function returning the layer's config-group body and tensors, and layers with equal schemes
share a config group. ``QuantLinear`` is the weight-only row, itself a table by format kind
(:func:`register_weight_only_kind`): ``int`` here (1–8 bits, symmetric or not, per
group/channel/tensor; GPTQ act-order recorded as ``actorder: "static"``, since lowbit's act-order
keeps groups contiguous and compressed-tensors 0.19+ has no ``g_idx``), ``fp`` with MXFP4/NVFP4
scales in ``io/ct_fp4.py``; NF4 and FP4 with float scales have no scheme (they go native).
Weight+activation modules add their rows (``int-quantized``, ``float-quantized``) from their own files.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import InputError
from ..formats import FormatSpec, pack, packed_width, unpack
from ..modules import QuantLinear
from .layers import quantized_modules

CT_FORMAT = "pack-quantized"
CT_METHOD = "compressed-tensors"
MIXED_FORMAT = "mixed-precision"  # the top-level format when config groups differ in format
_STRATEGY = {"group": "group", "channel": "channel", "tensor": "tensor"}
# A QuantLinear's state; "weight" is the native sentinel a loaded module may carry.
_KNOWN_TENSORS = {"weight_packed", "weight_scale", "weight_zero", "bias", "weight"}


# ---- the scheme registry: module type -> (config-group body, tensors) ---------------------------

class NotExpressible(InputError):
    """A module compressed-tensors has no scheme for (the message says why)."""


@dataclass(frozen=True)
class CTLayer:
    """One module as compressed-tensors stores it.

    ``scheme`` is the body of its config group: ``weights``, ``input_activations``,
    ``output_activations`` (QuantizationArgs dicts or None) and ``format`` (``pack-quantized``,
    ``int-quantized``, ``float-quantized``...). ``tensors`` are its tensors without the module
    prefix. Layers with equal schemes share a config group.
    """

    scheme: dict
    tensors: dict[str, torch.Tensor]


# fn(name, module, recipe or None) -> CTLayer, or raises NotExpressible
SchemeFn = Callable[[str, nn.Module, object], CTLayer]
_SCHEMES: dict[type, SchemeFn] = {}


def register_ct_scheme(module_type: type, fn: SchemeFn) -> None:
    """Teach the writer a quantized module type (a table row: other files add their own).

    Every module of ``module_type`` (or a subclass) in a model becomes ``fn(name, module, recipe)``
    in the checkpoint; its own state-dict entries are replaced by the layer's ``tensors``.
    """
    _SCHEMES[module_type] = fn


def scheme_fn(module: nn.Module) -> SchemeFn | None:
    return next((_SCHEMES[c] for c in type(module).__mro__ if c in _SCHEMES), None)


def ct_layers(model: nn.Module, recipe=None) -> dict[str, CTLayer]:
    """Every registered quantized module of ``model`` as a :class:`CTLayer` (NotExpressible if one
    cannot be written)."""
    recipe = recipe if recipe is not None else getattr(model, "lowbit_recipe", None)
    layers = {}
    for name, m in model.named_modules():
        fn = scheme_fn(m)
        if fn is not None:
            layers[name] = fn(name, m, recipe)
    return layers


def _scheme_key(scheme: dict) -> str:
    return json.dumps(scheme, sort_keys=True, default=str)


def group_layers(layers: dict[str, CTLayer]) -> list[tuple[dict, list[str]]]:
    """``[(scheme, [names])]``, the group with the most layers first (it targets ``Linear``)."""
    groups: dict[str, tuple[dict, list[str]]] = {}
    for name, layer in layers.items():
        groups.setdefault(_scheme_key(layer.scheme), (layer.scheme, []))[1].append(name)
    return sorted(groups.values(), key=lambda g: -len(g[1]))


# ---- the weight-only integer row (QuantLinear -> pack-quantized) --------------------------------

def _act_order(recipe) -> bool:
    return bool(getattr(getattr(recipe, "rounder", None), "act_order", False))


# QuantLinear's rows by format kind ("int" below; io/ct_fp4.py adds "fp").
_WEIGHT_ONLY_KINDS: dict[str, SchemeFn] = {}


def register_weight_only_kind(kind: str, fn: SchemeFn) -> None:
    """Teach the writer the QuantLinear layers of one format kind (``FormatSpec.kind``)."""
    _WEIGHT_ONLY_KINDS[kind] = fn


def weight_only_layer(name: str, m: QuantLinear, recipe=None) -> CTLayer:
    fn = _WEIGHT_ONLY_KINDS.get(m.spec.kind)
    if fn is None:
        raise NotExpressible(f"{name} uses {m.spec.label()}, which compressed-tensors cannot hold")
    return fn(name, m, recipe)


def int_layer(name: str, m: QuantLinear, recipe=None) -> CTLayer:
    spec = m.spec
    if spec.kind != "int" or not 1 <= spec.bits <= 8:
        raise NotExpressible(f"{name} uses {spec.label()}, which pack-quantized cannot hold")
    extra = set(m.state_dict()) - _KNOWN_TENSORS
    if extra:
        raise NotExpressible(f"{name} carries tensors compressed-tensors has no place for "
                             f"({', '.join(sorted(extra))})")
    # lowbit's act-order is static groups: contiguous groups, no g_idx (CT's "static" order).
    actorder = "static" if _act_order(recipe) and spec.granularity == "group" else None
    scheme = {"weights": weight_args(spec, actorder), "input_activations": None,
              "output_activations": None, "format": CT_FORMAT}
    return CTLayer(scheme, layer_tensors(m))


register_weight_only_kind("int", int_layer)
register_ct_scheme(QuantLinear, weight_only_layer)


def why_not_expressible(model: nn.Module) -> str | None:
    """None if every quantized layer has a compressed-tensors scheme, else the reason (one line)."""
    from ..arch import arch_for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv1d = arch_for(model).conv1d
    if conv1d:
        return "its layers are transformers Conv1D (GPT-2 style), which compressed-tensors cannot load"
    unknown = [n for n, m in quantized_modules(model).items() if scheme_fn(m) is None]
    if unknown:
        return f"{unknown[0]} is a {type(dict(model.named_modules())[unknown[0]]).__name__} with no compressed-tensors scheme"
    try:
        groups = group_layers(ct_layers(model))
    except NotExpressible as e:
        return str(e)
    if len(groups) > 1 and any(_packs_zero_point(scheme) for scheme, _ in groups):
        return ("it mixes several formats with asymmetric zero points, which transformers cannot "
                "load from compressed-tensors")
    return None


def packed_zero_point(spec: FormatSpec) -> bool:
    return not spec.sym and spec.granularity in ("group", "channel")


def _packs_zero_point(scheme: dict) -> bool:
    w = scheme.get("weights") or {}
    return (scheme.get("format") == CT_FORMAT and not w.get("symmetric", True)
            and w.get("strategy") in ("group", "channel"))


# ---- writing ---------------------------------------------------------------------------------

def weight_args(spec: FormatSpec, actorder: str | None = None) -> dict:
    """The ``weights`` entry of a config group, as compressed-tensors serialises it."""
    from compressed_tensors.quantization import QuantizationArgs

    kw = dict(num_bits=spec.bits, type="int", symmetric=spec.sym, strategy=_STRATEGY[spec.granularity],
              group_size=spec.group_size if spec.group_size > 0 else None, dynamic=False)
    if not spec.sym:
        kw["zp_dtype"] = "torch.int8"  # the signed zero points' dtype before packing, as llm-compressor records
    if spec.scale_dtype:
        kw["scale_dtype"] = f"torch.{spec.scale_dtype}"
    if actorder:
        kw["actorder"] = actorder
    return QuantizationArgs(**kw).model_dump()


def quantization_config(model: nn.Module, recipe=None) -> dict:
    """config.json's ``quantization_config`` for the model's quantized layers.

    One scheme: ``targets: ["Linear"]`` with every remaining float ``nn.Linear`` (``lm_head``...)
    in ``ignore`` — what llm-compressor writes. Several schemes (per-layer overrides, or module
    types with different schemes): the largest group keeps ``["Linear"]``, the others list their
    layers by exact name, which both compressed-tensors and vLLM match before class names.
    """
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    groups = group_layers(ct_layers(model, recipe))
    if not groups:
        raise InputError("model has no lowbit quantized layers to save")
    schemes = {}
    for i, (scheme, names) in enumerate(groups):
        targets = ["Linear"] if i == 0 else sorted(names)
        schemes[f"group_{i}"] = QuantizationScheme(targets=targets, **scheme)
    formats = {scheme["format"] for scheme, _ in groups}
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qc = QuantizationConfig(config_groups=schemes, format=formats.pop() if len(formats) == 1 else MIXED_FORMAT,
                            quantization_status="compressed", ignore=ignore, kv_cache_scheme=None,
                            global_compression_ratio=None)
    config = {
        "version": compressed_tensors.__version__,
        "quant_method": CT_METHOD,
        "sparsity_config": {},
        "transform_config": {},
        **qc.model_dump(mode="json", exclude=["quant_method"]),
    }
    if any(_packs_zero_point(scheme) for scheme, _ in groups):
        config["dequantize"] = True  # see the module docstring
    return config


def pack_zero_point(zero: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """Unsigned zeros ``(rows, n_groups)`` → CT's stored zero point."""
    if spec.granularity == "tensor":
        return (zero.to(torch.int32) - (1 << (spec.bits - 1))).to(torch.int8).reshape(1)
    return pack(zero.t().contiguous(), spec.bits).t().contiguous()


def unpack_zero_point(stored: torch.Tensor, spec: FormatSpec, out_features: int) -> torch.Tensor:
    """CT's stored zero point → lowbit's unsigned int32 zeros ``(rows, n_groups)``."""
    if spec.granularity == "tensor":
        return (stored.to(torch.int32) + (1 << (spec.bits - 1))).reshape(1, 1)
    return unpack(stored.t().contiguous(), spec.bits, out_features).t().to(torch.int32).contiguous()


def layer_tensors(m: QuantLinear) -> dict[str, torch.Tensor]:
    """One QuantLinear's tensors under compressed-tensors' names (without the module prefix)."""
    spec = m.spec
    t = {"weight_packed": m.weight_packed,
         "weight_scale": m.weight_scale.reshape(1) if spec.granularity == "tensor" else m.weight_scale,
         "weight_shape": torch.tensor([m.out_features, m.in_features], dtype=torch.int64)}
    if not spec.sym:
        t["weight_zero_point"] = pack_zero_point(m.weight_zero, spec)
    if m.bias is not None:
        t["bias"] = m.bias
    return {k: v.detach().contiguous() for k, v in t.items()}


def state_dict(model: nn.Module, recipe=None) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    for name, layer in ct_layers(model, recipe).items():
        for k in modules[name].state_dict():
            sd.pop(f"{name}.{k}", None)
        sd.update({f"{name}.{k}": v for k, v in layer.tensors.items()})
    return sd


# ---- reading ---------------------------------------------------------------------------------

def spec_from_args(args: dict, where: str) -> FormatSpec:
    """A config group's ``weights`` entry → FormatSpec (only what lowbit's QuantLinear can run)."""
    if args.get("type", "int") != "int":
        raise InputError(f"{where}: compressed-tensors weight type {args.get('type')!r} is not supported")
    strategy = args.get("strategy") or ("group" if (args.get("group_size") or 0) > 0 else "tensor")
    group = {"group": args.get("group_size"), "channel": -1, "tensor": 0}.get(strategy)
    if group is None:
        raise InputError(f"{where}: compressed-tensors strategy {strategy!r} is not supported")
    if args.get("actorder") not in (None, "weight", "static"):
        raise InputError(f"{where}: activation order {args['actorder']!r} (g_idx) is not supported")
    scale_dtype = args.get("scale_dtype")
    return FormatSpec(kind="int", bits=int(args.get("num_bits", 8)), sym=bool(args.get("symmetric", True)),
                      group_size=int(group),
                      scale_dtype=str(scale_dtype).removeprefix("torch.") if scale_dtype else None)


# Formats other files teach the reader (W8A8 int-quantized / float-quantized:
# io/ct_activation_schemes.py): config-group format -> CTReader.
_READERS: dict[str, "CTReader"] = {}
_SPEC_READERS: dict[type, "CTReader"] = {}


@dataclass(frozen=True)
class CTReader:
    """How lowbit loads the config groups of one compressed-tensors format QuantLinear does not run.

    ``layer_spec(group, where)``: what one layer of the group needs, an instance of
    ``spec_type`` (InputError when lowbit cannot run the group); ``empty_layer(out_features,
    in_features, layer_spec, bias, dtype, device)``: a :class:`CompressedTensorsLinear` subclass
    holding the checkpoint's tensors under their own names, whose ``to_quant_linear`` gives the
    lowbit module that runs it.
    """

    formats: tuple[str, ...]
    spec_type: type
    layer_spec: Callable[[dict, str], object]
    empty_layer: Callable[..., nn.Module]


def register_ct_reader(reader: CTReader) -> None:
    for fmt in reader.formats:
        _READERS[fmt] = reader
    _SPEC_READERS[reader.spec_type] = reader


def reader_for(group: dict) -> CTReader | None:
    return _READERS.get(group.get("format"))


def empty_layer(out_features: int, in_features: int, spec, bias: bool, dtype: torch.dtype, device=None):
    """The shell a loader puts in place of a quantized linear, for ``resolve_layers``' spec
    (integer pack-quantized here; other kinds and spec types by their registered reader)."""
    if isinstance(spec, FormatSpec) and spec.kind == "int":
        scale_dtype = getattr(torch, spec.scale_dtype) if spec.scale_dtype else dtype
        return CompressedTensorsLinear(out_features, in_features, spec, bias, scale_dtype, device)
    return _SPEC_READERS[type(spec)].empty_layer(out_features, in_features, spec, bias, dtype, device)


def check_config(qc: dict, where: str) -> None:
    fmt = qc.get("format")
    groups = (qc.get("config_groups") or {}).values()
    known = fmt == CT_FORMAT or fmt in _READERS or (
        fmt == MIXED_FORMAT and all(g.get("format") in (None, CT_FORMAT, *_READERS) for g in groups))
    if not known:
        raise InputError(f"{where}: compressed-tensors format {fmt!r} is not supported "
                         f"(only {', '.join([CT_FORMAT, *_READERS])})")
    if qc.get("kv_cache_scheme"):
        raise InputError(f"{where}: compressed-tensors kv-cache quantization is not supported")
    for gname, g in (qc.get("config_groups") or {}).items():
        if reader_for(g) is not None:
            reader_for(g).layer_spec(g, f"{where}: config group {gname}")  # raises if lowbit cannot run it
            continue
        if g.get("input_activations") or g.get("output_activations"):
            raise InputError(f"{where}: config group {gname} quantizes activations; "
                             f"only weight-only is supported")
        if g.get("format") not in (None, CT_FORMAT):
            raise InputError(f"{where}: config group {gname} has format {g.get('format')!r}")


def resolve_layers(model: nn.Module, qc: dict) -> dict[str, FormatSpec]:
    """Which modules of ``model`` each config group quantizes, by compressed-tensors' own matcher."""
    from collections import OrderedDict

    from compressed_tensors.utils.match import match_named_modules, match_targets

    target_to_spec: OrderedDict[str, FormatSpec] = OrderedDict()
    for gname, g in qc.get("config_groups", {}).items():
        reader = reader_for(g)
        spec = reader.layer_spec(g, f"config group {gname}") if reader is not None \
            else spec_from_args(g.get("weights") or {}, f"config group {gname}")
        for t in g.get("targets", []):
            target_to_spec[t] = spec
    layers = {}
    for name, module in match_named_modules(model, list(target_to_spec), qc.get("ignore") or []):
        if not isinstance(module, nn.Linear):
            raise InputError(f"{name}: compressed-tensors quantizes a {type(module).__name__}; "
                             f"lowbit loads quantized nn.Linear layers only")
        layers[name] = target_to_spec[match_targets(name, module, target_to_spec)[0]]
    return layers


class CompressedTensorsLinear(nn.Module):
    """One layer's tensors exactly as compressed-tensors stores them, until :meth:`to_quant_linear`.

    Loaders put this in place of each quantized ``nn.Linear`` so transformers fills it straight
    from the checkpoint (names, shapes and int dtypes all match); nothing is converted on the fly.
    """

    def __init__(self, out_features: int, in_features: int, spec: FormatSpec, bias: bool,
                 scale_dtype: torch.dtype, device=None):
        super().__init__()
        spec.check_fits(out_features, in_features)
        self.out_features, self.in_features, self.spec = out_features, in_features, spec
        granular = spec.granularity != "tensor"
        groups = spec.n_groups(in_features) if granular else 1
        kw = dict(device=device)
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_width(in_features, spec.bits), dtype=torch.int32, **kw))
        scale_shape = (out_features, groups) if granular else (1,)
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=scale_dtype, **kw))
        self.register_buffer("weight_shape", torch.zeros(2, dtype=torch.int64, **kw))
        if not spec.sym:
            zp = (torch.zeros(packed_width(out_features, spec.bits), groups, dtype=torch.int32, **kw)
                  if granular else torch.zeros(1, dtype=torch.int8, **kw))
            self.register_buffer("weight_zero_point", zp)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=scale_dtype, **kw)) if bias else None

    def to_quant_linear(self, name: str = "layer") -> QuantLinear:
        shape = [int(x) for x in self.weight_shape.tolist()]
        if shape != [self.out_features, self.in_features]:
            raise InputError(f"{name}: checkpoint weight_shape {shape} does not match the model's "
                             f"[{self.out_features}, {self.in_features}]")
        q = QuantLinear(self.in_features, self.out_features, self.spec, self.bias is not None,
                        dtype=self.weight_scale.dtype, device=self.weight_packed.device)
        q.weight_packed.copy_(self.weight_packed)
        q.weight_scale.copy_(self.weight_scale.reshape(q.weight_scale.shape))
        if not self.spec.sym:
            q.weight_zero.copy_(unpack_zero_point(self.weight_zero_point, self.spec, self.out_features))
        if self.bias is not None:
            q.bias.data.copy_(self.bias.detach())
        return q
