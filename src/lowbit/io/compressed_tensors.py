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
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import InputError
from ..formats import FormatSpec, pack, packed_width, unpack
from ..modules import QuantLinear
from .layers import group_by_format, quantized_modules

CT_FORMAT = "pack-quantized"
CT_METHOD = "compressed-tensors"
_STRATEGY = {"group": "group", "channel": "channel", "tensor": "tensor"}
# A QuantLinear's state; "weight" is the native sentinel a loaded module may carry.
_KNOWN_TENSORS = {"weight_packed", "weight_scale", "weight_zero", "bias", "weight"}


def why_not_expressible(model: nn.Module) -> str | None:
    """None if every quantized layer fits pack-quantized, else the reason (one line)."""
    from ..arch import arch_for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv1d = arch_for(model).conv1d
    if conv1d:
        return "its layers are transformers Conv1D (GPT-2 style), which compressed-tensors cannot load"
    layers = quantized_modules(model)
    for name, m in layers.items():
        if m.spec.kind != "int" or not 1 <= m.spec.bits <= 8:
            return f"{name} uses {m.spec.label()}, which pack-quantized cannot hold"
        extra = set(m.state_dict()) - _KNOWN_TENSORS
        if extra:
            return f"{name} carries tensors compressed-tensors has no place for ({', '.join(sorted(extra))})"
    groups = group_by_format(layers)
    if len(groups) > 1 and any(packed_zero_point(spec) for spec, _ in groups):
        return ("it mixes several formats with asymmetric zero points, which transformers cannot "
                "load from compressed-tensors")
    return None


def packed_zero_point(spec: FormatSpec) -> bool:
    return not spec.sym and spec.granularity in ("group", "channel")


# ---- writing ---------------------------------------------------------------------------------

def weight_args(spec: FormatSpec) -> dict:
    """The ``weights`` entry of a config group, as compressed-tensors serialises it."""
    from compressed_tensors.quantization import QuantizationArgs

    kw = dict(num_bits=spec.bits, type="int", symmetric=spec.sym, strategy=_STRATEGY[spec.granularity],
              group_size=spec.group_size if spec.group_size > 0 else None, dynamic=False)
    if not spec.sym:
        kw["zp_dtype"] = "torch.int8"  # the signed zero points' dtype before packing, as llm-compressor records
    if spec.scale_dtype:
        kw["scale_dtype"] = f"torch.{spec.scale_dtype}"
    return QuantizationArgs(**kw).model_dump()


def quantization_config(model: nn.Module) -> dict:
    """config.json's ``quantization_config`` for the model's QuantLinear layers.

    One format: ``targets: ["Linear"]`` with every remaining float ``nn.Linear`` (``lm_head``...)
    in ``ignore`` — what llm-compressor writes. Several formats (per-layer overrides): the largest
    group keeps ``["Linear"]``, the others list their layers by exact name, which both
    compressed-tensors and vLLM match before class names.
    """
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    groups = group_by_format(quantized_modules(model))
    if not groups:
        raise InputError("model has no lowbit quantized layers to save")
    schemes = {}
    for i, (spec, names) in enumerate(groups):
        targets = ["Linear"] if i == 0 else sorted(names)
        schemes[f"group_{i}"] = QuantizationScheme(targets=targets, weights=weight_args(spec),
                                                   format=CT_FORMAT)
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qc = QuantizationConfig(config_groups=schemes, format=CT_FORMAT, quantization_status="compressed",
                            ignore=ignore, kv_cache_scheme=None, global_compression_ratio=None)
    config = {
        "version": compressed_tensors.__version__,
        "quant_method": CT_METHOD,
        "sparsity_config": {},
        "transform_config": {},
        **qc.model_dump(mode="json", exclude=["quant_method"]),
    }
    if any(packed_zero_point(spec) for spec, _ in groups):
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


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in model.state_dict().items()}
    for name, m in quantized_modules(model).items():
        for k in _KNOWN_TENSORS:
            sd.pop(f"{name}.{k}", None)
        sd.update({f"{name}.{k}": v for k, v in layer_tensors(m).items()})
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


def check_config(qc: dict, where: str) -> None:
    fmt = qc.get("format")
    if fmt != CT_FORMAT:
        raise InputError(f"{where}: compressed-tensors format {fmt!r} is not supported (only {CT_FORMAT!r})")
    if qc.get("kv_cache_scheme"):
        raise InputError(f"{where}: compressed-tensors kv-cache quantization is not supported")
    for gname, g in (qc.get("config_groups") or {}).items():
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
        spec = spec_from_args(g.get("weights") or {}, f"config group {gname}")
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
