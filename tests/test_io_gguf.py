"""GGUF export: an independent decoder written from the block formats' description (ggml's
Q8_0/Q4_0/Q4_1: 32 weights per block, a float16 scale d (and minimum m), codes as int8 or as
nibbles with weight j in the low and j+16 in the high half of byte j) reads lowbit's integers
back; gguf-py's own dequantizer agrees; transformers' GGUF loader rebuilds the model (q/k
permutation undone) with the same logits, and its tokenizer splits text as the original does."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import gguf_export, inspect_checkpoint, load, save
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_gptq_layout import random_layer


# ---- a tiny model with a byte-level BPE tokenizer (what GGUF's "gpt2" tokenizer holds) ----------

@functools.lru_cache(maxsize=1)
def bpe_tokenizer():
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([topics[k] for k in sorted(topics)[:40]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")


def bpe_model(arch: str, seed: int = 0, **config_fields):
    tokenizer = bpe_tokenizer()
    config = tiny_models.CONFIGS[arch]()
    for k, v in config_fields.items():
        setattr(config, k, v)
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, None
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float().eval(), tokenizer


def quantized_bpe_model(arch: str, spec: FormatSpec, overrides=(), **config_fields):
    model, tokenizer = bpe_model(arch, **config_fields)
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides), progress=False)
    return model, tokenizer


# ---- the blocks ----------------------------------------------------------------------------------

def decode_blocks(raw: np.ndarray, qtype, in_f: int):
    """``(codes (out, in), d (out, in/32), m or None)`` from the bytes of a GGUF tensor."""
    out_f = raw.shape[0]
    size = {T.Q8_0: 34, T.Q4_0: 18, T.Q4_1: 20}[qtype]
    blocks = raw.reshape(out_f, in_f // 32, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    if qtype == T.Q8_0:
        return blocks[..., 2:].view(np.int8).astype(np.int64).reshape(out_f, in_f), d, None
    start = 2 if qtype == T.Q4_0 else 4
    m = None if qtype == T.Q4_0 else blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    nib = blocks[..., start:].astype(np.int64)
    codes = np.concatenate([nib & 0xF, nib >> 4], axis=-1)  # weight j low nibble, j+16 high
    return codes.reshape(out_f, in_f), d, m


@pytest.mark.parametrize("spec, qtype", [
    (FormatSpec(bits=8, sym=True, group_size=32, scale_dtype="float16"), T.Q8_0),
    (FormatSpec(bits=4, sym=True, group_size=32, scale_dtype="float16"), T.Q4_0),
    (FormatSpec(bits=4, sym=False, group_size=32, scale_dtype="float16"), T.Q4_1),
], ids=["Q8_0", "Q4_0", "Q4_1"])
def test_independent_decoder_reads_our_blocks(spec, qtype):
    m = random_layer(spec, out_f=24, in_f=96)
    assert gguf_export.gguf_type(spec) == qtype
    raw = gguf_export.encode_blocks(m.codes(), m.weight_scale, m.weight_zero, qtype)
    codes, d, mins = decode_blocks(raw, qtype, 96)
    offset = 128 if qtype == T.Q8_0 else 0
    assert np.array_equal(codes + offset, m.codes().numpy())
    assert np.array_equal(d, m.weight_scale.double().numpy())
    theirs = gguf_dequantize(raw, qtype).astype(np.float64)  # the consuming library's decoder
    ours = m.dequantized_weight(torch.float64).numpy()
    if qtype == T.Q4_1:
        want_m = (-m.weight_zero.double() * m.weight_scale.double()).half().double().numpy()
        assert np.array_equal(mins, want_m)
        w = codes * np.repeat(d, 32, 1) + np.repeat(mins, 32, 1)
        # m is float16: below 2^-11 of |m| = zero·scale, so under 2^-11·15 steps of the grid.
        assert np.abs(w - ours).max() <= 2 ** -11 * np.abs(want_m).max()
    else:
        w = (codes - (8 if qtype == T.Q4_0 else 0)) * np.repeat(d, 32, 1)
        assert np.array_equal(w, ours)
    assert np.allclose(theirs, w, rtol=1e-6, atol=1e-7)


def test_permutation_is_undone_by_transformers_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(48, 8)  # 3 kv heads of 16 rows
    permuted = gguf_export.permute_rows(w, 3).numpy()
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(permuted, 6, 3)
    assert np.array_equal(back, w.numpy()) and not np.array_equal(permuted, w.numpy())


# ---- whole models --------------------------------------------------------------------------------

SYM = dict(sym=True, group_size=32, scale_dtype="float16")
# transformers reads no head_dim for qwen3 GGUFs (its default, 128, is real Qwen3's): see below.
QWEN3_HEAD_DIM = 128
CASES = {
    # Q4_0 + Q8_0 with float16 scales and float32 float tensors: transformers decodes exactly our weights.
    "llama-Q4_0+Q8_0": ("llama", FormatSpec(bits=4, **SYM), (("mlp.down_proj", FormatSpec(bits=8, **SYM)),), 1e-5),
    # Q4_1's m is float16-rounded; a g64 layer has no GGUF type and is written in float.
    "qwen3-Q4_1+g64": ("qwen3", FormatSpec(bits=4, sym=False, group_size=32, scale_dtype="float16"),
                       (("self_attn.o_proj", FormatSpec(bits=4, sym=False, group_size=64, scale_dtype="float16")),),
                       2e-2),
    # biases (qwen2): float32 scales, rounded to float16 in the file.
    "qwen2-Q8_0-bias": ("qwen2", FormatSpec(bits=8, sym=True, group_size=32), (), 2e-2),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("gguf"), {}
    for case, (arch, spec, overrides, _) in CASES.items():
        extra = {"head_dim": QWEN3_HEAD_DIM} if arch == "qwen3" else {}
        model, tokenizer = quantized_bpe_model(arch, spec, overrides, **extra)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = root / case
            path.mkdir()
            summary = gguf_export.export_gguf(model, tokenizer, path / gguf_export.GGUF_FILE, float_type="f32")
            gguf_export.verify(path / gguf_export.GGUF_FILE, model, tokenizer)
        out[case] = (model, tokenizer, path, summary, [str(w.message) for w in caught])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_gguf_loader_rebuilds_our_model(exported, case):
    model, tokenizer, path, summary, caught = exported[case]
    back = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_export.GGUF_FILE, dtype=torch.float32).eval()
    assert type(back) is type(model)
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = back(ids).logits, model(ids).logits
    tol = CASES[case][3]
    assert (got - want).abs().max().item() <= tol * want.abs().max().item()
    assert not any("tokenizer" in w for w in caught)
    back_tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_export.GGUF_FILE)
    text = "The quick brown fox: 12 jumps, then\n\n    def f(x): return x"
    assert back_tok(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids


def test_summary_counts_types_and_dequantized_layers(exported):
    assert exported["llama-Q4_0+Q8_0"][3]["types"] == {"Q4_0": 12, "Q8_0": 2, "float32": 7}
    summary, caught = exported["qwen3-Q4_1+g64"][3:]
    assert summary["dequantized_layers"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    assert any("no matching GGUF block type" in w for w in caught)
    assert any("rounded to float16" in w for w in exported["qwen2-Q8_0-bias"][4])


def test_save_load_inspect_gguf(tmp_path):
    """lowbit.save(format="gguf") writes a directory with model.gguf; load and inspect read it."""
    model, tokenizer = quantized_bpe_model("llama", FormatSpec(bits=4, **SYM))
    out = save(model, tokenizer, tmp_path / "g", format="gguf")
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf", "recipe.yaml"]
    info = inspect_checkpoint(out)
    assert info["format"] == "gguf" and info["quantized_layers"] == 14 and info["bits_per_weight"] == 4.5
    loaded, loaded_tok = load(out)
    ids = torch.randint(0, len(tokenizer), (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = loaded(ids).logits, model(ids).logits
    assert (got - want).abs().max().item() <= 1e-2 * want.abs().max().item()  # F16 embeddings and norms F32
    assert loaded_tok is not None


def test_what_gguf_cannot_hold_is_refused(tmp_path):
    gpt2 = tiny_models.build("gpt2")
    with pytest.raises(InputError, match="GGUF export supports"):
        gguf_export.export_gguf(gpt2, None, tmp_path / "x.gguf")
    from tiny_checkpoint import char_tokenizer
    llama, _ = quantized_bpe_model("llama", FormatSpec(bits=4, **SYM))
    with pytest.raises(InputError, match="byte-level BPE"):
        save(llama, char_tokenizer(), tmp_path / "char", format="gguf")
    assert not (tmp_path / "char").exists()


def test_export_that_transformers_would_misread_is_refused(tmp_path):
    """A qwen3 whose head_dim is not transformers' default cannot be described by the keys its
    GGUF loader reads: the read-back check refuses it, and nothing is left behind."""
    model, tokenizer = quantized_bpe_model("qwen3", FormatSpec(bits=4, **SYM))  # tiny head_dim 16
    with pytest.raises(InputError, match="head_dim = 128 back, the model has 16"):
        save(model, tokenizer, tmp_path / "q3", format="gguf")
    assert not (tmp_path / "q3").exists()
