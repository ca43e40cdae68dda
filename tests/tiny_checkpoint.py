"""A tiny Hugging Face model directory (config, weights, tokenizer) made offline, for CLI tests.

The tokenizer is character-level over printable ASCII (about 100 entries), so it fits the tiny
models' 256-entry vocabulary and needs no download.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

import tiny_models


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = ["<unk>", "<s>", "</s>"] + list(string.printable)
    vocab = {c: i for i, c in enumerate(dict.fromkeys(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def write_model_dir(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    model = tiny_models.build(arch, seed)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
