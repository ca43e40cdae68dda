"""Every checkpoint format lowbit writes, by name, and the readers of the foreign ones.

| format               | what is written                          | module                  | read back by            |
| -------------------- | ---------------------------------------- | ----------------------- | ----------------------- |
| `compressed-tensors` | safetensors + `quantization_config`      | `compressed_tensors.py` | transformers, vLLM      |
| `native`             | safetensors + `quantization_config`      | `native.py`             | lowbit                  |
| `gptq`, `gptq-v2`    | safetensors + `quantization_config`      | `gptq_layout.py`        | GPTQModel, vLLM         |
| `awq`                | safetensors + `quantization_config`      | `awq_layout.py`         | AutoAWQ, vLLM, transformers |
| `gguf`               | `model.gguf`                             | `gguf_export.py`        | llama.cpp, transformers |

The first two are handled by :mod:`lowbit.io.checkpoint` itself. The GPTQ and AWQ layouts are
*directory layouts*: the same transformers writer with other tensors and another
``quantization_config``. They are read back by translating each layer's tensors to lowbit's
native ones (exact integer conversions) and loading the result through the native quantizer, so
checkpoints other tools wrote in these layouts load too. GGUF files load through transformers'
GGUF loader as float models (every GGUF block type dequantizes there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import awq_layout, gguf_export, gptq_layout, native
from .files import CONFIG_NAME, CheckpointError, weight_files

GGUF = "gguf"


@dataclass(frozen=True)
class DirectoryLayout:
    """A layout written by transformers' own writer: other tensors, another config."""

    why_not: Callable[[nn.Module], str | None]
    state_dict: Callable[[nn.Module], dict]
    quantization_config: Callable[..., dict]  # (model, recipe) -> dict


DIRECTORY_LAYOUTS = {
    **{name: DirectoryLayout(partial(gptq_layout.why_not_expressible, version=v),
                             partial(gptq_layout.state_dict, version=v),
                             partial(gptq_layout.quantization_config, version=v))
       for name, v in gptq_layout.VERSIONS.items()},
    "awq": DirectoryLayout(awq_layout.why_not_expressible, awq_layout.state_dict,
                           awq_layout.quantization_config),
}
EXPORT_FORMATS = ("compressed-tensors", "native", *DIRECTORY_LAYOUTS, GGUF)
# quant_method -> the module that reads that layout (spec_for, to_native, version_of)
IMPORTERS = {gptq_layout.METHOD: gptq_layout, awq_layout.METHOD: awq_layout}


def why_not(fmt: str, model: nn.Module) -> str | None:
    from .layers import lowbit_modules, quantized_modules

    weight_and_activation = sorted(set(lowbit_modules(model)) - set(quantized_modules(model)))
    if weight_and_activation:
        return (f"{weight_and_activation[0]} quantizes activations too, which the {fmt} layout cannot "
                f"hold (weight-only integer layers only)")
    if fmt == GGUF:
        return gguf_export.why_not_expressible(model)
    return DIRECTORY_LAYOUTS[fmt].why_not(model)


def write_gguf(model: nn.Module, tokenizer, directory: Path, float_type: str = "f16") -> dict:
    """``directory/model.gguf``, read back through transformers before it counts as written."""
    path = Path(directory) / gguf_export.GGUF_FILE
    summary = gguf_export.export_gguf(model, tokenizer, path, float_type=float_type,
                                      source_gguf=getattr(model, "lowbit_gguf_source", None))
    gguf_export.verify(path, model, tokenizer)
    return summary


# ---- finding what a path holds ------------------------------------------------------------------

def gguf_file(path: str | os.PathLike) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the one ``.gguf`` of a directory that has
    no ``config.json`` (what ``format="gguf"`` writes). None otherwise."""
    p = Path(path).expanduser()
    if p.is_file():
        return p if p.suffix.lower() == ".gguf" else None
    if p.is_dir() and not (p / CONFIG_NAME).exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise CheckpointError(f"{p} holds several .gguf files; name the one to use")
    return None


# ---- GPTQ / AWQ: read by translation to the native layout ---------------------------------------

def read_translated(p: Path, qc: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A GPTQ or AWQ checkpoint's tensors as a native state dict, and its native config."""
    from safetensors.torch import load_file

    layout = IMPORTERS[qc.get("quant_method")]
    version = layout.version_of(qc) if hasattr(layout, "version_of") else 0
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(p):
        tensors.update(load_file(f))
    names = sorted(k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight"))
    if not names:
        raise CheckpointError(f"{p}: a {layout.METHOD} checkpoint without any .qweight tensor")
    groups: dict = {}
    for name in names:
        spec = layout.spec_for(qc, name)
        if spec is None:
            raise CheckpointError(f"{p}: {name} has quantized tensors but the config leaves it in float")
        own = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors)
               if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        out_f, in_f, converted = layout.to_native(name, own, spec, version)
        tensors.update({f"{name}.{k}": v for k, v in converted.items()})
        tensors[f"{name}.{native.SENTINEL}"] = native.sentinel()
        groups.setdefault(spec, {})[name] = [out_f, in_f]
    config = {"quant_method": "lowbit", "layout": native.LAYOUT, "packing": "int32-lsb",
              "groups": {f"group_{i}": {"format": spec.to_dict(), "modules": modules}
                         for i, (spec, modules) in enumerate(groups.items())},
              "sentinel": native.SENTINEL, "imported_from": layout.METHOD}
    return config, tensors


def format_name(method: str, qc: dict) -> str:
    """The lowbit format name of a GPTQ/AWQ checkpoint (GPTQ's version shows: gptq, gptq-v2)."""
    if method == gptq_layout.METHOD:
        return {v: k for k, v in gptq_layout.VERSIONS.items()}[gptq_layout.version_of(qc)]
    return method


def foreign_layers(qc: dict, table: dict[str, dict]) -> list[dict]:
    """Per-layer rows of a GPTQ/AWQ checkpoint from its safetensors headers (for ``inspect``)."""
    layout = IMPORTERS[qc.get("quant_method")]
    rows = []
    for key in sorted(k for k in table if k.endswith(".qweight")):
        name = key.removesuffix(".qweight")
        spec = layout.spec_for(qc, name)
        shape = table[key]["shape"]
        if layout is gptq_layout:
            g_idx = table.get(f"{name}.g_idx")
            if g_idx is None:
                raise CheckpointError(f"GPTQ checkpoint: layer {name} is missing tensor {name}.g_idx")
            out_f, in_f = shape[1], g_idx["shape"][0]
        else:
            out_f, in_f = shape[1] * 8, shape[0]
        if spec is None:
            raise CheckpointError(f"{name} has quantized tensors but the config leaves it in float")
        rows.append({"name": name, "shape": [out_f, in_f], "bits": spec.bits, "group_size": spec.group_size,
                     "sym": spec.sym, "format": spec.label(),
                     "tensors": ("qweight", "qzeros", "scales", "g_idx")})
    return rows


# ---- GGUF: what a file holds ---------------------------------------------------------------------

def inspect_gguf(path: Path) -> dict:
    """The ``inspect`` summary of a GGUF file: quantized tensors are the ones of a block type."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    floats = {T.F32, T.F16, T.BF16, T.F64}
    layers, q_bits, q_weights, total = [], 0, 0, 0
    for t in reader.tensors:
        n = int(t.n_elements)
        total += n
        if t.tensor_type in floats:
            continue
        bits = 8 * int(t.n_bytes)
        layers.append({"name": t.name, "shape": [int(d) for d in reversed(t.shape)], "format": t.tensor_type.name,
                       "bits_per_weight": round(bits / n, 4)})
        q_bits, q_weights = q_bits + bits, q_weights + n
    arch = reader.fields.get("general.architecture")
    size = path.stat().st_size
    return {"path": str(path), "format": GGUF, "model_type": arch.contents() if arch else None,
            "quantized_layers": len(layers), "quantized_weights": q_weights,
            "bits_per_weight": round(q_bits / q_weights, 4) if q_weights else None,
            "model_bits_per_weight": round(8 * size / max(1, total), 4),
            "size_bytes": size, "recipe": None, "layers": layers}
