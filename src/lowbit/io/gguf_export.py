"""GGUF export (llama.cpp's file format) through the ``gguf`` package, readable by transformers'
GGUF loader (``from_pretrained(dir, gguf_file=...)``) and llama.cpp.

Quantized linears whose format matches a GGUF block type are written as that type, from
lowbit's own codes (nothing is re-rounded); GGUF blocks are 32 consecutive inputs of one row:

| lowbit format      | GGUF  | block bytes                                   | weight                |
| int8 sym g32       | Q8_0  | f16 ``d``, 32 × int8 ``q − 128``              | ``d · (q − 128)``     |
| int4 sym g32       | Q4_0  | f16 ``d``, 16 bytes: byte j = q[j] ∣ q[j+16]≪4 | ``d · (q − 8)``       |
| int4 asym g32      | Q4_1  | f16 ``d``, f16 ``m``, 16 bytes as Q4_0        | ``d · q + m``         |

with ``d = scale`` and ``m = −zero · scale``. ``d`` and ``m`` are float16: a model quantized with
``scale_dtype: float16`` gives Q8_0/Q4_0 files that decode to exactly lowbit's weights (Q4_1's
``m`` is rounded to float16 whatever the scale dtype; its error is below 2^-11 of ``m``). Every
other tensor is written in float: 1-D tensors (norms, biases) as F32, matrices as F16 (or F32 with
``float_type="f32"``), quantized layers of other formats dequantized first.

llama.cpp's llama graph expects ``attn_q``/``attn_k`` rows permuted for its rotary layout
(``convert_hf_to_gguf.py``'s ``permute``); transformers' loader undoes it for the llama
architecture only. The permutation moves whole rows, so it is applied to codes, scales and zeros
alike. Metadata keys are the inverse of transformers' own GGUF→config table
(``GGUF_CONFIG_MAPPING``), and every export is read back through transformers' config parser and
compared with the model's config before it is kept.

Tokenizer: byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen 2...) are written as
``tokenizer.ggml.model = "gpt2"`` with tokens, token types, merges, special token ids, the
pre-tokenizer name (matched against the split regexes transformers knows) and the chat template.
A model that itself came from a GGUF (``model.lowbit_gguf_source``) has that file's tokenizer
fields copied verbatim instead. The written tokenizer is loaded back and compared on a probe text;
a difference is warned about (see ``docs/CHECKPOINTS.md``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import InputError
from ..formats import FormatSpec
from .layers import quantized_modules

GGUF_FILE = "model.gguf"
BLOCK = 32
PROBE_TEXT = ("Hello world! The quick brown fox jumps over 13 lazy dogs.\n\n"
              "    def f(x):\n        return x ** 2  # squares\n"
              "Ünïcödé — “quotes”, 1234567, tabs\tand  double  spaces.")


@dataclass(frozen=True)
class GGUFArch:
    """How one transformers ``model_type`` is written: llama.cpp's architecture name, and whether
    its graph wants q/k rows permuted (llama.cpp's llama converter does this; qwen's do not)."""

    name: str
    permute_qk: bool


# transformers' legacy GGUF loader reads these (integrations/ggml.py GGUF_CONFIG_MAPPING).
ARCHS = {
    "llama": GGUFArch("llama", True),
    "mistral": GGUFArch("llama", True),  # llama.cpp writes Mistral as llama (no sliding window)
    "qwen2": GGUFArch("qwen2", False),
    "qwen3": GGUFArch("qwen3", False),
}


def gguf_type(spec: FormatSpec):
    """The GGUF block type that holds ``spec`` exactly, or None."""
    from gguf import GGMLQuantizationType as T

    if spec.kind != "int" or spec.group_size != BLOCK:
        return None
    return {(8, True): T.Q8_0, (4, True): T.Q4_0, (4, False): T.Q4_1}.get((spec.bits, spec.sym))


# ---- block encoding ----------------------------------------------------------------------------

def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """float array ``(..., nb)`` → its float16 bytes ``(..., nb, 2)``."""
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes ``(..., nb, 32)`` → ``(..., nb, 16)`` bytes: byte j = code j | code j+16 << 4."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def encode_blocks(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, qtype) -> np.ndarray:
    """lowbit codes ``(out, in)`` with group-32 ``scale``/``zero`` ``(out, in/32)`` → GGUF bytes
    ``(out, in/32 · block bytes)`` of ``qtype``."""
    from gguf import GGMLQuantizationType as T

    out_f, in_f = codes.shape
    q = codes.numpy().astype(np.uint8).reshape(out_f, in_f // BLOCK, BLOCK)
    d = scale.double().numpy()
    if qtype == T.Q8_0:
        parts = [_f16_bytes(d), (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    elif qtype == T.Q4_0:
        parts = [_f16_bytes(d), _nibbles(q)]
    elif qtype == T.Q4_1:
        m = -zero.double().numpy() * d
        parts = [_f16_bytes(d), _f16_bytes(m), _nibbles(q)]
    else:
        raise InputError(f"GGUF type {qtype!r} is not one lowbit writes")
    return np.concatenate(parts, axis=-1).reshape(out_f, -1)


def permute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k permutation on the rows of ``t (out, ...)``: within each head, the two
    rotary halves are interleaved (row order ``0, d/2, 1, d/2+1, ...``)."""
    rest = t.shape[1:]
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *rest).transpose(1, 2).reshape(t.shape)


# ---- the file ----------------------------------------------------------------------------------

def why_not_expressible(model: nn.Module) -> str | None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHS:
        return (f"GGUF export supports {', '.join(sorted(ARCHS))} models (those transformers' GGUF "
                f"loader reads back), not {model_type!r}")
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope scaling {rope.get('rope_type')!r} has no GGUF key transformers reads back"
    if getattr(config, "attention_bias", False) and model_type in ("llama", "mistral"):
        return "llama-architecture GGUF has no attention biases"
    if getattr(config, "sliding_window", None) and model_type == "mistral":
        return "a Mistral sliding window has no llama GGUF key"
    return None


def export_gguf(model: nn.Module, tokenizer, path: str | Path, float_type: str = "f16",
                source_gguf: str | Path | None = None) -> dict:
    """Write ``model`` (float or with lowbit QuantLinear layers) to the GGUF file ``path``.

    Returns a summary: tensor counts per GGUF type and how many layers had to be dequantized.
    """
    import gguf

    reason = why_not_expressible(model)
    if reason:
        raise InputError(f"cannot export as GGUF: {reason}")
    if float_type not in ("f16", "f32"):
        raise InputError(f"GGUF float type must be f16 or f32, got {float_type!r}")
    config = model.config
    arch = ARCHS[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch.name)
    # general.name; transformers reads a llama file whose name says "mistral" as Mistral.
    writer.add_name(Path(getattr(config, "_name_or_path", "") or "model").name or "model")
    writer.add_quantized_by(f"lowbit {__version__}")
    _write_config(writer, config, arch)
    if source_gguf is not None:
        _copy_tokenizer(writer, source_gguf, config.vocab_size)
    elif tokenizer is not None:
        _write_tokenizer(writer, tokenizer, config.vocab_size)
    else:
        warnings.warn("GGUF export without a tokenizer: llama.cpp needs one to run the file", stacklevel=2)
    summary = _write_tensors(writer, model, arch, float_type)
    writer.add_file_type(_file_type(summary["types"]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return summary


def _config_value(config, attr: str):
    if attr == "rope_theta":
        return (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    if attr == "head_dim":
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return getattr(config, attr, None)


def _write_config(writer, config, arch: GGUFArch) -> None:
    from gguf import GGUFValueType
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    written = set()
    for key, attr in GGUF_CONFIG_MAPPING[arch.name].items():
        value = _config_value(config, attr) if attr else None
        if value is None or isinstance(value, (list, dict)):
            continue
        vtype = GGUFValueType.FLOAT32 if isinstance(value, float) else GGUFValueType.UINT32
        writer.add_key_value(f"{arch.name}.{key}", value, vtype)
        written.add(key)
    if "rope.dimension_count" not in written:  # llama.cpp reads it; transformers ignores it here
        writer.add_rope_dimension_count(_config_value(config, "head_dim"))


def _hf_tensors(model: nn.Module):
    """``(hf_name, tensor or QuantLinear)`` in state-dict order; a tied ``lm_head`` is left out."""
    qlayers = quantized_modules(model)
    tied = getattr(model.config, "tie_word_embeddings", False)
    done = set()
    for key, tensor in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in qlayers:
            if prefix not in done:
                done.add(prefix)
                yield f"{prefix}.weight", qlayers[prefix]
                if qlayers[prefix].bias is not None:
                    yield f"{prefix}.bias", qlayers[prefix].bias.detach()
            continue
        if tied and key == "lm_head.weight":
            continue
        if leaf not in ("weight", "bias") or not tensor.is_floating_point():
            raise InputError(f"cannot export as GGUF: {key} ({tensor.dtype}) has no GGUF form")
        yield key, tensor


def _write_tensors(writer, model: nn.Module, arch: GGUFArch, float_type: str) -> dict:
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(_arch_enum(arch.name), config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads,
             "attn_k": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    types: dict[str, int] = {}
    dequantized, rounded_scales = [], 0
    for hf_name, item in _hf_tensors(model):
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise InputError(f"cannot export as GGUF: no GGUF name for tensor {hf_name}")
        n_head = heads.get(gguf_base.rpartition(".")[2]) if arch.permute_qk else None
        name = f"{gguf_base}.{suffix}"
        qtype = gguf_type(item.spec) if hasattr(item, "spec") else None
        if qtype is not None:
            codes, scale, zero = item.codes(), item.weight_scale, item.weight_zero
            if n_head:
                codes, scale = permute_rows(codes, n_head), permute_rows(scale, n_head)
                zero = permute_rows(zero, n_head) if zero is not None else None
            rounded_scales += int(not torch.equal(scale.half().to(scale.dtype), scale))
            writer.add_tensor(name, encode_blocks(codes, scale, zero, qtype), raw_dtype=qtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
            continue
        if hasattr(item, "spec"):
            dequantized.append(hf_name.removesuffix(".weight"))
            item = item.dequantized_weight(torch.float32)
        t = item.detach().float()
        if n_head:
            t = permute_rows(t, n_head)
        dtype = np.float32 if t.dim() == 1 or float_type == "f32" else np.float16
        writer.add_tensor(name, t.numpy().astype(dtype))
        types[np.dtype(dtype).name] = types.get(np.dtype(dtype).name, 0) + 1
    if dequantized:
        warnings.warn(f"GGUF export: {len(dequantized)} quantized layers have no matching GGUF block type "
                      f"(Q8_0/Q4_0/Q4_1 need group size 32) and were written in float "
                      f"(first: {dequantized[0]})", stacklevel=3)
    if rounded_scales:
        warnings.warn(f"GGUF export: {rounded_scales} layers' scales were rounded to float16 (quantize "
                      f"with scale_dtype float16 for a file that decodes to exactly the same weights)",
                      stacklevel=3)
    return {"types": types, "dequantized_layers": dequantized, "rounded_scale_layers": rounded_scales}


def _arch_enum(name: str):
    from gguf import MODEL_ARCH_NAMES

    return next(k for k, v in MODEL_ARCH_NAMES.items() if v == name)


def _file_type(types: dict[str, int]) -> int:
    from gguf import LlamaFileType as F

    by_type = {"Q8_0": F.MOSTLY_Q8_0, "Q4_0": F.MOSTLY_Q4_0, "Q4_1": F.MOSTLY_Q4_1, "float16": F.MOSTLY_F16}
    ranked = sorted((n, t) for t, n in types.items() if t in by_type)
    return int(by_type[ranked[-1][1]]) if ranked else int(F.ALL_F32)


# ---- tokenizer ---------------------------------------------------------------------------------

def _copy_tokenizer(writer, source: str | Path, vocab_size: int) -> None:
    """Every ``tokenizer.*`` field of another GGUF (the model's own source), types kept."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        raise InputError(f"{source}: its tokenizer does not have the model's {vocab_size} tokens")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """The llama.cpp pre-tokenizer name whose split regex transformers maps to this tokenizer's."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    parts = (pre or {}).get("pretokenizers") or ([pre] if pre else [])
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if regexes:
        return next((name for name, rx in GGUF_PRE_TOKENIZER_SPLITS.items() if rx == regexes[0]), "default")
    return "gpt-2"  # ByteLevel's own regex is GPT-2's, which transformers uses when no name matches


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer")
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(pre):
        raise InputError(f"cannot export as GGUF: only byte-level BPE tokenizers can be written "
                         f"(this one is {model.get('type', type(tokenizer).__name__)})")
    vocab = dict(model["vocab"])
    kinds = {}
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        kinds[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise InputError(f"cannot export as GGUF: the tokenizer has {n} tokens, the model {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [TokenType.UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, kinds.get(i, TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(pre))
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, attr, None)
        if isinstance(token_id, int):
            add(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


# ---- reading back ------------------------------------------------------------------------------

_CHECKED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size", "vocab_size", "head_dim", "tie_word_embeddings",
                   "rms_norm_eps", "rope_theta")


def verify(path: Path, model: nn.Module, tokenizer=None) -> None:
    """Read the file back through transformers: its config must be the model's (InputError
    otherwise), and its tokenizer should encode a probe text as ``tokenizer`` does (warning)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    got = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    for attr in _CHECKED_CONFIG:
        want, have = _config_value(model.config, attr), _config_value(got, attr)
        if want is not None and not _same(want, have):
            raise InputError(f"cannot export as GGUF: transformers would read {attr} = {have!r} back, "
                             f"the model has {want!r}")
    if tokenizer is None:
        return
    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = back(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        warnings.warn(f"GGUF export: the tokenizer read back from {path.name} splits text differently "
                      f"from the model's (first difference at token {first} of a probe text)", stacklevel=2)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    return a == b
