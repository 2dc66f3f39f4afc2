"""transformers ``GlmForCausalLM`` layout (e.g. glm-4-9b-hf) <-> the project's GLM tree.

Ref: transformers ``models/glm/modeling_glm.py`` and ``GlmConfig`` (glm4voice.md §4.5, [TF]).
q/k/v are separate Linear layers with bias (``attention_bias``), ``gate_up_proj`` rows are
[gate (F) | up (F)], and rotary covers the first ``head_dim * partial_rotary_factor`` dims of
each head with adjacent pairs, as in the chatglm code, so no q/k row permutation is needed.
RoPE base is ``rope_theta``; the project stores it as rope_ratio = rope_theta / 10000.

Note: transformers 4.46 sized attention heads as hidden_size // num_attention_heads and used
``head_dim`` for the rotary part only; newer versions use ``head_dim`` for both. The two agree
whenever head_dim * num_attention_heads == hidden_size, as in every GLM-4 release.

Axes: D embed, F mlp, N query heads, K kv heads, H head dim, V vocab.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from glmvoice_jax.convert.glm import glm_weights
from glmvoice_jax.convert.glm.glm_weights import Entry, Part
from glmvoice_jax.models import glm

ARCHITECTURES = ("GlmForCausalLM",)

_FIXED = {"hidden_act": "silu", "tie_word_embeddings": False, "rope_scaling": None}

_TEMPLATE = {
    "architectures": ["GlmForCausalLM"],
    "model_type": "glm",
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "use_cache": True,
}


def config_from_hf(hf: Mapping, path: str) -> tuple[glm.GLMConfig, str | None]:
    """GLMConfig (and the torch_dtype, if given) of a GlmForCausalLM config.json.

    Raises:
      KeyError / ValueError: naming ``path`` and the missing or unsupported field.
    """
    glm_weights.check_architecture(hf, path, "transformers", ARCHITECTURES)
    glm_weights.check_fixed(hf, path, _FIXED)
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps RoPE fields here
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{path}: rope_parameters.rope_type = {rope['rope_type']!r} is not supported; the "
            "GLM-4 decoder needs plain RoPE ('default')"
        )
    merged = {**{k: v for k, v in rope.items() if k != "rope_type"}, **hf}
    f = lambda name: glm_weights.hf_field(merged, path, name)  # noqa: E731
    cfg = glm.GLMConfig(
        vocab_size=int(f("vocab_size")),
        embed_dim=int(f("hidden_size")),
        num_layers=int(f("num_hidden_layers")),
        num_heads=int(f("num_attention_heads")),
        num_kv_heads=int(f("num_key_value_heads")),
        head_dim=int(f("head_dim")),
        mlp_dim=int(f("intermediate_size")),
        rope_ratio=float(f("rope_theta")) / 10000.0,
        rotary_fraction=float(f("partial_rotary_factor")),
        norm_eps=float(f("rms_norm_eps")),
        qkv_bias=bool(f("attention_bias")),
    )
    return cfg, glm_weights.torch_dtype(hf, path)


def rename_table(cfg: glm.GLMConfig) -> list[Entry]:
    """The GlmForCausalLM tensors, their shapes and the project leaves they become."""
    d, f, v = cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    lay = "model.layers.{i}."
    table = [
        Entry("model.embed_tokens.weight", (v, d), (Part("embed.embedding", vocab=True),)),
        Entry(lay + "input_layernorm.weight", (d,), (Part("layers.attn_norm.scale"),)),
        Entry(
            lay + "self_attn.q_proj.weight", (q, d), (Part("layers.attn.q.kernel", transpose=True),)
        ),
        Entry(
            lay + "self_attn.k_proj.weight",
            (kv, d),
            (Part("layers.attn.k.kernel", transpose=True),),
        ),
        Entry(
            lay + "self_attn.v_proj.weight",
            (kv, d),
            (Part("layers.attn.v.kernel", transpose=True),),
        ),
    ]
    if cfg.qkv_bias:
        table += [
            Entry(lay + "self_attn.q_proj.bias", (q,), (Part("layers.attn.q.bias"),)),
            Entry(lay + "self_attn.k_proj.bias", (kv,), (Part("layers.attn.k.bias"),)),
            Entry(lay + "self_attn.v_proj.bias", (kv,), (Part("layers.attn.v.bias"),)),
        ]
    table += [
        Entry(
            lay + "self_attn.o_proj.weight",
            (d, q),
            (Part("layers.attn.out.kernel", transpose=True),),
        ),
        Entry(lay + "post_attention_layernorm.weight", (d,), (Part("layers.mlp_norm.scale"),)),
        Entry(
            lay + "mlp.gate_up_proj.weight",
            (2 * f, d),
            (
                Part("layers.mlp.gate.kernel", (0, f), transpose=True),
                Part("layers.mlp.up.kernel", (f, 2 * f), transpose=True),
            ),
        ),
        Entry(
            lay + "mlp.down_proj.weight", (d, f), (Part("layers.mlp.down.kernel", transpose=True),)
        ),
        Entry("model.norm.weight", (d,), (Part("final_norm.scale"),)),
        Entry("lm_head.weight", (v, d), (Part("head.kernel", transpose=True, vocab=True),)),
    ]
    return table


def extra_tensors(cfg: glm.GLMConfig, dtype: str) -> dict[str, np.ndarray]:
    return {}  # transformers keeps the rotary frequencies out of the state dict


def hf_config(cfg: glm.GLMConfig, dtype: str, base: Mapping | None) -> dict:
    """config.json for ``cfg``: the imported one (``base``) with the math fields set."""
    out = dict(_TEMPLATE)
    out.update(base or {})
    out.update(
        num_hidden_layers=cfg.num_layers,
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.mlp_dim,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        partial_rotary_factor=cfg.rotary_fraction,
        rope_theta=10000.0 * cfg.rope_ratio,
        rms_norm_eps=cfg.norm_eps,
        attention_bias=cfg.qkv_bias,
        vocab_size=cfg.vocab_size,
        torch_dtype=dtype,
    )
    return out


FORMAT = glm_weights.Format(
    name="transformers",
    architectures=ARCHITECTURES,
    config_from_hf=config_from_hf,
    rename_table=rename_table,
    hf_config=hf_config,
    extra_tensors=extra_tensors,
)
