"""Architecture tables: one row per family. Adding an architecture is adding a row here and a
tiny-model test, never a subclass.

Module names were read from transformers 5.23's modeling files (``models/<family>/modeling_*.py``);
the tiny-model tests check every row against the real modules, and that folding a scale into each
group's feeder leaves the model's output unchanged.
"""
from __future__ import annotations

from .archmap import ArchMap, LinearGroup as G, rows, variants

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")


def _llama_like(name: str, model_types: tuple[str, ...], norm: str = "rmsnorm",
                mlp_norm: str = "post_attention_layernorm", prefix: str = "model") -> ArchMap:
    return ArchMap(
        name=name, model_types=model_types, blocks=f"{prefix}.layers",
        embeddings=(f"{prefix}.embed_tokens",), final_norm=f"{prefix}.norm", head="lm_head",
        groups=(
            G("input_layernorm", _ATTN, norm),
            G("self_attn.v_proj", ("self_attn.o_proj",), "linear"),
            G(mlp_norm, _MLP, norm),
            # act(gate) * up is linear in up, so up can absorb down's input scale.
            G("mlp.up_proj", ("mlp.down_proj",), "linear"),
        ),
    )


LLAMA = _llama_like("llama", ("llama",))
MISTRAL = _llama_like("mistral", ("mistral",))
QWEN2 = _llama_like("qwen2", ("qwen2",))
# qwen3's q_norm/k_norm act per head after q_proj/k_proj; v -> o is untouched by them.
QWEN3 = _llama_like("qwen3", ("qwen3",))
# Every gemma generation (1, 2, 3) normalises with x * (1 + w) in transformers 5.23.
GEMMA = _llama_like("gemma", ("gemma",), norm="rmsnorm_offset")
# Gemma 2/3 normalise the attention output with post_attention_layernorm (before the residual
# add); the MLP reads pre_feedforward_layernorm.
GEMMA2 = _llama_like("gemma2", ("gemma2",), norm="rmsnorm_offset", mlp_norm="pre_feedforward_layernorm")
GEMMA3 = _llama_like("gemma3", ("gemma3_text",), norm="rmsnorm_offset",
                     mlp_norm="pre_feedforward_layernorm")
# model_type "gemma3" is the image-text model (Gemma3ForConditionalGeneration, what
# AutoModelForCausalLM builds for it): the same decoder under model.language_model; the vision
# tower and projector lie outside the blocks and stay float.
GEMMA3_MM = _llama_like("gemma3-mm", ("gemma3",), norm="rmsnorm_offset",
                        mlp_norm="pre_feedforward_layernorm", prefix="model.language_model")

PHI3 = ArchMap(
    name="phi3", model_types=("phi3",), blocks="model.layers",
    embeddings=("model.embed_tokens",), final_norm="model.norm", head="lm_head",
    groups=(
        G("input_layernorm", ("self_attn.qkv_proj",)),
        # qkv_proj's trailing rows are v.
        G("self_attn.qkv_proj", ("self_attn.o_proj",), "linear"),
        G("post_attention_layernorm", ("mlp.gate_up_proj",)),
        # gate_up_proj's trailing half is up, which feeds down_proj through act(gate) * up.
        G("mlp.gate_up_proj", ("mlp.down_proj",), "linear"),
    ),
)

# Pre-layer-norm OPT (125m, 1.3b and up).
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
# OPT-350m normalises after each residual add, so a norm's output is also the residual stream
# and cannot absorb a scale; q/k/v read the block input. It has no final norm, and
# project_in/project_out (outside the blocks) stay float.
OPT_POST_LN = ArchMap(
    name="opt-post-ln", model_types=("opt",), blocks="model.decoder.layers",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    final_norm="", head="lm_head",
    groups=(
        G("", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "none"),
        G("self_attn.v_proj", ("self_attn.out_proj",), "linear"),
        G("self_attn_layer_norm", ("fc1",), "none"),
        G("fc1", ("fc2",), "linear"),
    ),
    when=(("do_layer_norm_before", False),),
)

GPT2 = ArchMap(
    name="gpt2", model_types=("gpt2",), blocks="transformer.h",
    embeddings=("transformer.wte", "transformer.wpe"), final_norm="transformer.ln_f", head="lm_head",
    groups=(
        G("ln_1", ("attn.c_attn",), "layernorm"),
        # c_attn's trailing third is v.
        G("attn.c_attn", ("attn.c_proj",), "linear"),
        G("ln_2", ("mlp.c_fc",), "layernorm"),
        # GELU does not commute with scaling: nothing can absorb a scale for mlp.c_proj.
        G("mlp.c_fc", ("mlp.c_proj",), "none"),
    ),
    conv1d=True,
)

_ALL = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3, GEMMA3_MM, PHI3, OPT, OPT_POST_LN, GPT2)
# model_type -> default row; model_type -> rows for configs wired differently (tried first).
ARCH_TABLE: dict[str, ArchMap] = rows(*_ALL)
ARCH_VARIANTS: dict[str, tuple[ArchMap, ...]] = variants(*_ALL)
