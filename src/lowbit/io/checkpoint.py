"""save / load / inspect: the checkpoint verbs the CLI and the Python API share.

``save`` picks compressed-tensors pack-quantized (loads in plain transformers and vLLM, no lowbit
needed) whenever every quantized layer fits it, and the native layout otherwise; both record the
recipe (``recipe.yaml``, and inside the native ``quantization_config``). ``load`` reads either
back into lowbit ``QuantLinear`` modules through transformers' own ``from_pretrained`` (so
architectures, tied weights, shards and non-persistent buffers are handled as transformers
handles them), with this package's quantizer doing the module swap. The other formats lowbit
writes and reads (GPTQ, AWQ, GGUF) are dispatched through :mod:`lowbit.io.export`.
"""
from __future__ import annotations

import functools

import json
import os
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from ..errors import InputError
from ..modules.input_hadamard import input_hadamard_layers
from . import compressed_tensors as ct
from . import ct_activation_schemes, ct_fp4, export, native
from .atomic import atomic_directory, check_writable_target
from .files import (CONFIG_NAME, RECIPE_NAME, CheckpointError, checkpoint_dir, read_json,
                    tensor_table, weight_files)
from .layers import lowbit_modules

FORMATS = ("auto", *export.EXPORT_FORMATS)  # GPTQ, AWQ and GGUF: see lowbit.io.export
_ALIASES = {"ct": "compressed-tensors", "compressed_tensors": "compressed-tensors", "gptq_v2": "gptq-v2"}
_DTYPE_BYTES = {"I8": 1, "U8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8, "F64": 8,
                "F8_E4M3": 1, "F8_E5M2": 1}


def choose_format(model: nn.Module, format: str = "auto") -> str:
    fmt = _ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise InputError(f"unknown checkpoint format {format!r} (choose from {', '.join(FORMATS)})")
    if not lowbit_modules(model):
        raise InputError("model has no lowbit quantized layers to save (quantize it first)")
    rotating = input_hadamard_layers(model)
    if rotating and fmt not in ("auto", "native"):
        raise InputError(f"cannot save as {fmt}: {next(iter(rotating))} rotates its inputs online "
                         f"(online_hadamard), which only lowbit's native layout records; use format='native'")
    if rotating:
        return "native"
    if fmt not in ("auto", "compressed-tensors", "native"):
        reason = export.why_not(fmt, model)
        if reason:
            raise InputError(f"cannot save as {fmt}: {reason}")
        return fmt
    reason = ct.why_not_expressible(model)
    if fmt == "compressed-tensors" and reason:
        raise InputError(f"cannot save as compressed-tensors: {reason}; use format='native'")
    if fmt == "auto":
        return "native" if reason else "compressed-tensors"
    return fmt


def save(model: nn.Module, tokenizer=None, out_dir: str | os.PathLike = "out", format: str = "auto",
         overwrite: bool = False, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write ``model`` (with lowbit QuantLinear layers), its tokenizer and recipe to ``out_dir``.

    Atomic: everything goes to a temporary sibling directory that is renamed into place only
    when complete. ``extra_files`` maps relative file names to text or bytes (reports, ...).
    Returns the output path.
    """
    from ..modules.fused_projections import is_fused

    if is_fused(model):
        raise InputError("this model's projections were fused for running (fuse_projections): "
                         "its state dict no longer has the checkpoint's names; save it before "
                         "fusing")
    fmt = choose_format(model, format)
    out = check_writable_target(out_dir, overwrite)
    extra = _checked_extra_files(extra_files or {})
    recipe = getattr(model, "lowbit_recipe", None)
    if fmt == "compressed-tensors":
        tensors, qconfig = ct.state_dict(model), ct.quantization_config(model)
    elif fmt in export.DIRECTORY_LAYOUTS:
        layout = export.DIRECTORY_LAYOUTS[fmt]
        tensors, qconfig = layout.state_dict(model), layout.quantization_config(model, recipe)
    elif fmt != export.GGUF:
        tensors, qconfig = native.state_dict(model), native.quantization_config(model, recipe)
    with atomic_directory(out, overwrite) as tmp:
        if fmt == export.GGUF:  # one file holding tensors, config and tokenizer
            export.write_gguf(model, tokenizer, tmp)
        else:
            _save_pretrained(model, tmp, tensors)
            config = read_json(tmp / CONFIG_NAME)
            config["quantization_config"] = qconfig
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        if recipe is not None:
            recipe.save_yaml(tmp / RECIPE_NAME)
        for rel, content in extra.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
    return out


def _save_pretrained(model: nn.Module, directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """transformers' writer (tied weights, key reversal, shards), with our tensors.

    A model loaded through a quantizer would have ``save_pretrained`` ask that quantizer for the
    state dict instead of ours, so it is detached for the duration.
    """
    quantizer = model.__dict__.pop("hf_quantizer", None)
    try:
        model.save_pretrained(directory, state_dict=tensors)
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer


def _checked_extra_files(extra: dict[str, str | bytes]) -> dict[str, str | bytes]:
    for rel in extra:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise InputError(f"extra file name {rel!r} must be a relative path inside the output directory")
        if p.parts[0] in (CONFIG_NAME, "model.safetensors", "model.safetensors.index.json"):
            raise InputError(f"extra file {rel!r} would replace a checkpoint file")
    return extra


# ---- loading ---------------------------------------------------------------------------------

def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    """True for a directory lowbit.load reads (never raises: ``path`` may be a hub id)."""
    try:
        detect_format(path)
    except (InputError, OSError):
        return False
    return True


def detect_format(path: str | os.PathLike) -> str:
    """"compressed-tensors", "native", "gptq", "awq" (config.json's quant_method) or "gguf" (a
    ``.gguf`` file, or a directory holding one and no config.json); InputError for anything else."""
    if export.gguf_file(path) is not None:
        return export.GGUF
    p = checkpoint_dir(path)
    qc = read_json(p / CONFIG_NAME).get("quantization_config")
    if not isinstance(qc, dict):
        raise CheckpointError(f"{p} is not a quantized checkpoint (config.json has no quantization_config)")
    method = qc.get("quant_method")
    if method == "lowbit":
        return "native"
    if method == ct.CT_METHOD:
        ct.check_config(qc, str(p))
        return "compressed-tensors"
    if method in export.IMPORTERS:
        export.IMPORTERS[method].check_config(qc, str(p))
        return method
    raise CheckpointError(f"{p}: quantization method {method!r} is not one lowbit reads "
                          f"(lowbit, compressed-tensors, {', '.join(export.IMPORTERS)})")


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a lowbit native or compressed-tensors pack-quantized checkpoint.

    Returns ``(model, tokenizer)``: an eval-mode model whose quantized layers are lowbit
    ``QuantLinear`` modules, and the tokenizer saved beside it (None if there is none).
    compressed-tensors checkpoints from other tools (llm-compressor W4A16 and the like) load too:
    layers are found with compressed-tensors' own target/ignore matcher. GPTQ and AWQ checkpoints
    (any tool's) are translated to the native layout first; GGUF files load as float models
    (:mod:`lowbit.io.export`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import hf_quantizer  # noqa: F401  (registers quant_method "lowbit")

    fmt = detect_format(path)
    if fmt == export.GGUF:  # a float model, dequantized by transformers' GGUF loader
        from ..sources import load_model
        model, tokenizer = load_model(str(export.gguf_file(path)))
        return (model.to(device) if torch.device(device).type != "cpu" else model), tokenizer
    p = checkpoint_dir(path)
    tensor_table(p)  # one-line errors for missing, truncated or corrupt weight files
    config = AutoConfig.from_pretrained(p)
    if fmt in export.IMPORTERS:
        return _load_translated(p, config, device), _tokenizer(p)
    if fmt == "compressed-tensors":
        config.quantization_config = {
            "quant_method": "lowbit", "layout": "compressed-tensors",
            "compressed_tensors": read_json(p / CONFIG_NAME)["quantization_config"],
            "recipe": _lowbit_recipe(_recipe_yaml(p))}
    try:
        model = AutoModelForCausalLM.from_pretrained(p, config=config)
    except RuntimeError as e:
        raise CheckpointError(f"{p}: tensors do not match config.json ({str(e).splitlines()[0]})") from None
    model.eval()
    if torch.device(device).type != "cpu":
        model.to(device)
    return model, _tokenizer(p)


def _load_translated(p: Path, config, device):
    """GPTQ/AWQ: tensors converted to the native layout in memory, loaded like a native checkpoint."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config.quantization_config, state_dict = export.read_translated(p, config.quantization_config)
    config.quantization_config["recipe"] = _lowbit_recipe(_recipe_yaml(p))
    # The model class itself: the Auto class insists on a path, which excludes a state dict.
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    try:
        model, info = model_class.from_pretrained(None, config=config, state_dict=state_dict,
                                                  output_loading_info=True)
    except RuntimeError as e:
        raise CheckpointError(f"{p}: tensors do not match config.json ({str(e).splitlines()[0]})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(f"{p}: the checkpoint has no tensor {missing[0]} (and {len(missing) - 1} more missing)")
    model.eval()
    return model.to(device) if torch.device(device).type != "cpu" else model


@functools.cache
def _tolerant_loader():
    """A safe YAML loader that reads tags it does not know (llm-compressor writes its enums as
    ``!!python/object/apply:...ActivationOrdering``) as the plain value under them, never as
    Python objects: another tool's recipe is only informative here."""
    import yaml

    class TolerantLoader(yaml.SafeLoader):
        pass

    def plain(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            items = loader.construct_sequence(node, deep=True)
            return items[0] if len(items) == 1 else items
        return loader.construct_mapping(node, deep=True)

    TolerantLoader.add_multi_constructor("", plain)
    return TolerantLoader


def _recipe_yaml(p: Path) -> dict | None:
    import yaml

    f = p / RECIPE_NAME
    if not f.is_file():
        return None
    try:
        data = yaml.load(f.read_text(), Loader=_tolerant_loader())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{f}: not valid YAML ({e})") from None
    return data if isinstance(data, dict) else None


def _lowbit_recipe(data: dict | None) -> dict | None:
    """``data`` if it is a lowbit recipe; None for other tools' recipe.yaml (llm-compressor's)."""
    from ..recipes import Recipe

    try:
        Recipe.from_dict(data or {})
    except (ValueError, TypeError, KeyError):
        return None
    return data


def _tokenizer(p: Path):
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(p)


# ---- inspecting ------------------------------------------------------------------------------

def inspect(path: str | os.PathLike) -> dict:
    """What a checkpoint holds, read from config.json and safetensors headers only (fast).

    ``bits_per_weight`` counts codes, scales and zeros of the quantized layers per weight;
    ``model_bits_per_weight`` divides every stored byte by every (logical) parameter.
    """
    fmt = detect_format(path)
    if fmt == export.GGUF:
        return export.inspect_gguf(export.gguf_file(path))
    p = checkpoint_dir(path)
    config = read_json(p / CONFIG_NAME)
    qc = config["quantization_config"]
    table = tensor_table(p)
    if fmt in export.IMPORTERS:
        layers = export.foreign_layers(qc, table)
    else:
        layers = _ct_layers(p, qc, table) if fmt == "compressed-tensors" else _native_layers(qc)
    q_bits = q_weights = 0
    for row in layers:
        keys = row.pop("tensors", ("weight_packed", "weight_scale", "weight_zero", "weight_zero_point",
                                   "weight_scale_scale", "weight_scale_offset",  # these two: double quant
                                   "weight_global_scale"))  # NVFP4
        if f"{row['name']}.{keys[0]}" not in table:
            raise CheckpointError(f"{p}: config lists layer {row['name']} but the weights do not hold it")
        n = row["shape"][0] * row["shape"][1]
        bits = 8 * sum(_nbytes(table[f"{row['name']}.{k}"]) for k in keys
                       if f"{row['name']}.{k}" in table)
        row["bits_per_weight"] = round(bits / n, 4)
        q_bits, q_weights = q_bits + bits, q_weights + n
    quantized = {row["name"] for row in layers}
    other = sum(_numel(t) for k, t in table.items()
                if k.rpartition(".")[0] not in quantized)
    total_bytes = sum(f.stat().st_size for f in weight_files(p))
    recipe = qc.get("recipe") if fmt == "native" else _recipe_yaml(p)
    return {
        "path": str(p), "format": export.format_name(fmt, qc), "model_type": config.get("model_type"),
        "quantized_layers": len(layers), "quantized_weights": q_weights,
        "bits_per_weight": round(q_bits / q_weights, 4) if q_weights else None,
        "model_bits_per_weight": round(8 * total_bytes / max(1, q_weights + other), 4),
        "size_bytes": total_bytes, "recipe": recipe, "layers": layers,
    }


# A W8A8 layer's stored tensors in lowbit's native layout (codes first: they must be there).
W8A8_TENSORS = ("weight_codes", "weight_scale", "input_scale")


def _row(name: str, shape, spec) -> dict:
    return {"name": name, "shape": [int(shape[0]), int(shape[1])], "bits": spec.bits,
            "group_size": spec.group_size, "sym": spec.sym, "format": spec.label()}


def _native_layers(qc: dict) -> list[dict]:
    specs = native.layer_specs(qc)
    shapes = {n: s for g in qc.get("groups", {}).values() for n, s in g.get("modules", {}).items()}
    acts = native.layer_activations(qc)  # W8A8 layers: unpacked codes, static input scales
    return [_row(n, shapes[n], specs[n]) | ({"activations": acts[n].label, "tensors": W8A8_TENSORS}
                                             if n in acts else {}) for n in specs]


def _ct_layers(p: Path, qc: dict, table: dict) -> list[dict]:
    """Quantized layers are the ``*.weight_packed`` tensors; each takes the most specific group
    that targets it (exact name, then regex, then class name — compressed-tensors' order)."""
    from compressed_tensors.utils.match import match_name
    from safetensors import safe_open

    # int32 words are pack-quantized; uint8 bytes are MXFP4/NVFP4 (ct_fp4.inspect_rows)
    names = [k.removesuffix(".weight_packed") for k, t in table.items()
             if k.endswith(".weight_packed") and t["dtype"] == "I32"]
    shapes = {}
    for f in weight_files(p):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                if k.endswith(".weight_shape"):
                    shapes[k.removesuffix(".weight_shape")] = h.get_tensor(k).tolist()
    groups = [(t, ct.spec_from_args(g.get("weights") or {}, gname))
              for gname, g in qc.get("config_groups", {}).items() if ct.reader_for(g) is None
              for t in g.get("targets", [])]
    rows = []
    for name in names:
        exact_then_regex = sorted(groups, key=lambda ts: ("re:" in ts[0], ts[0]))
        by_name = [s for t, s in exact_then_regex if match_name(name, t)]
        by_class = [s for t, s in groups if not t.startswith("re:") and "." not in t]  # e.g. "Linear"
        spec = (by_name or by_class or [None])[0]
        if spec is None or name not in shapes:
            raise CheckpointError(f"{p}: cannot tell the format of layer {name}")
        rows.append(_row(name, shapes[name], spec))
    return rows + ct_fp4.inspect_rows(table) + ct_activation_schemes.inspect_rows(table)


def _numel(t: dict) -> int:
    n = 1
    for d in t["shape"]:
        n *= d
    return n


def _nbytes(t: dict) -> int:
    return _numel(t) * _DTYPE_BYTES.get(t["dtype"], 4)
