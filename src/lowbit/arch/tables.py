"""Architecture tables: one row per family. Adding an architecture is adding a row here and a
tiny-model test, never a subclass."""
from __future__ import annotations

from .archmap import ArchMap, LinearGroup as G, rows

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")


def _llama_like(name: str, model_types: tuple[str, ...], norm: str = "rmsnorm",
                mlp_norm: str = "post_attention_layernorm") -> ArchMap:
    return ArchMap(
        name=name, model_types=model_types, blocks="model.layers",
        embeddings=("model.embed_tokens",), final_norm="model.norm", head="lm_head",
        groups=(
            G("input_layernorm", _ATTN, norm),
            G("self_attn.v_proj", ("self_attn.o_proj",), "linear"),
            G(mlp_norm, _MLP, norm),
            G("mlp.up_proj", ("mlp.down_proj",), "linear"),
        ),
    )


LLAMA = _llama_like("llama", ("llama",))
MISTRAL = _llama_like("mistral", ("mistral",))
QWEN2 = _llama_like("qwen2", ("qwen2",))
QWEN3 = _llama_like("qwen3", ("qwen3",))
GEMMA = _llama_like("gemma", ("gemma",), norm="rmsnorm_offset")
# Gemma 2/3 normalise the attention output with post_attention_layernorm; the MLP reads
# pre_feedforward_layernorm.
GEMMA2 = _llama_like("gemma2", ("gemma2",), norm="rmsnorm_offset", mlp_norm="pre_feedforward_layernorm")
GEMMA3 = _llama_like("gemma3", ("gemma3_text", "gemma3"), norm="rmsnorm_offset",
                     mlp_norm="pre_feedforward_layernorm")

PHI3 = ArchMap(
    name="phi3", model_types=("phi3",), blocks="model.layers",
    embeddings=("model.embed_tokens",), final_norm="model.norm", head="lm_head",
    groups=(
        G("input_layernorm", ("self_attn.qkv_proj",)),
        G("self_attn.qkv_proj", ("self_attn.o_proj",), "linear"),
        G("post_attention_layernorm", ("mlp.gate_up_proj",)),
        # gate_up_proj's up half feeds down_proj through act(gate) * up.
        G("mlp.gate_up_proj", ("mlp.down_proj",), "linear"),
    ),
)

OPT = ArchMap(
    name="opt", model_types=("opt",), blocks="model.decoder.layers",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    final_norm="model.decoder.final_layer_norm", head="lm_head",
    groups=(
        G("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "layernorm"),
        G("self_attn.v_proj", ("self_attn.out_proj",), "linear"),
        G("final_layer_norm", ("fc1",), "layernorm"),
        # ReLU commutes with positive per-channel scales, so fc1 can absorb fc2's input scale.
        G("fc1", ("fc2",), "linear"),
    ),
)

GPT2 = ArchMap(
    name="gpt2", model_types=("gpt2",), blocks="transformer.h",
    embeddings=("transformer.wte", "transformer.wpe"), final_norm="transformer.ln_f", head="lm_head",
    groups=(
        G("ln_1", ("attn.c_attn",), "layernorm"),
        G("attn.c_attn", ("attn.c_proj",), "linear"),
        G("ln_2", ("mlp.c_fc",), "layernorm"),
        # GELU does not commute with scaling: nothing can absorb a scale for mlp.c_proj.
        G("mlp.c_fc", ("mlp.c_proj",), "none"),
    ),
    conv1d=True,
)

ARCH_TABLE: dict[str, ArchMap] = rows(
    LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3, PHI3, OPT, GPT2,
)
