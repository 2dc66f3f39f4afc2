"""THUDM chatglm checkpoint layout (GLM-4-9B, GLM-4-Voice-9B) <-> the project's GLM tree.

Ref: modeling_chatglm.py / configuration_chatglm.py, the GLM-4 remote code shipped with
THUDM/glm-4-9b and THUDM/glm-4-voice-9b (glm4voice.md §4.1-4.4, [MC]). Architectures
``ChatGLMModel`` / ``ChatGLMForConditionalGeneration``; every tensor is prefixed ``transformer.``.

Layout details: ``query_key_value`` rows are [q (N*H) | k (K*H) | v (K*H)], its bias likewise;
``dense_h_to_4h`` rows are [gate (F) | up (F)]. The ``rotary_pos_emb.inv_freq`` buffer is not
imported (the model recomputes RoPE with base 10000 * rope_ratio); export re-creates it exactly as
the reference ``RotaryEmbedding(kv_channels // 2)`` does: 1 / 10000 ** (arange(0, d, 2) / d),
d = kv_channels // 2, in the checkpoint dtype, ignoring rope_ratio.

Axes: D embed, F mlp, N query heads, K kv heads, H head dim, V vocab.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_dtypes
import numpy as np

from glmvoice_jax.convert.glm import glm_weights
from glmvoice_jax.convert.glm.glm_weights import Entry, Part
from glmvoice_jax.models import glm

ARCHITECTURES = ("ChatGLMModel", "ChatGLMForConditionalGeneration")
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"

# Values of the chatglm switches that the GLM-4 math (models/glm.py) implements. A missing field
# takes the reference ChatGLMConfig default, which equals the value here.
_FIXED = {
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "add_bias_linear": False,
    "original_rope": True,
    "fp32_residual_connection": False,
    "tie_word_embeddings": False,
}

# config.json of an export when the checkpoint was not imported from this layout; the remote code
# files named by auto_map come with the THUDM release, not with this project.
_TEMPLATE = {
    "_name_or_path": "glmvoice_jax-export",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    "add_bias_linear": False,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "classifier_dropout": None,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "multi_query_attention": True,
    "original_rope": True,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "use_cache": True,
}


def config_from_hf(hf: Mapping, path: str) -> tuple[glm.GLMConfig, str | None]:
    """GLMConfig (and the torch_dtype, if given) of a chatglm config.json.

    Raises:
      KeyError / ValueError: naming ``path`` and the missing or unsupported field.
    """
    glm_weights.check_architecture(hf, path, "chatglm", ARCHITECTURES)
    glm_weights.check_fixed(hf, path, _FIXED)
    f = lambda name: glm_weights.hf_field(hf, path, name)  # noqa: E731
    heads = int(f("num_attention_heads"))
    kv_heads = int(f("multi_query_group_num")) if f("multi_query_attention") else heads
    cfg = glm.GLMConfig(
        vocab_size=int(f("padded_vocab_size")),
        embed_dim=int(f("hidden_size")),
        num_layers=int(f("num_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(f("kv_channels")),
        mlp_dim=int(f("ffn_hidden_size")),
        rope_ratio=float(f("rope_ratio")),
        rotary_fraction=0.5,  # the reference rotates kv_channels // 2 dims of each head
        norm_eps=float(f("layernorm_epsilon")),
        qkv_bias=bool(f("add_qkv_bias")),
    )
    return cfg, glm_weights.torch_dtype(hf, path)


def rename_table(cfg: glm.GLMConfig) -> list[Entry]:
    """The chatglm tensors, their shapes and the project leaves they become (glm4voice.md §4.6)."""
    d, f, v = cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    lay = "transformer.encoder.layers.{i}."
    table = [
        Entry(
            "transformer.embedding.word_embeddings.weight",
            (v, d),
            (Part("embed.embedding", vocab=True),),
        ),
        Entry(lay + "input_layernorm.weight", (d,), (Part("layers.attn_norm.scale"),)),
        Entry(
            lay + "self_attention.query_key_value.weight",
            (q + 2 * kv, d),
            (
                Part("layers.attn.q.kernel", (0, q), transpose=True),
                Part("layers.attn.k.kernel", (q, q + kv), transpose=True),
                Part("layers.attn.v.kernel", (q + kv, q + 2 * kv), transpose=True),
            ),
        ),
    ]
    if cfg.qkv_bias:
        table.append(
            Entry(
                lay + "self_attention.query_key_value.bias",
                (q + 2 * kv,),
                (
                    Part("layers.attn.q.bias", (0, q)),
                    Part("layers.attn.k.bias", (q, q + kv)),
                    Part("layers.attn.v.bias", (q + kv, q + 2 * kv)),
                ),
            )
        )
    table += [
        Entry(
            lay + "self_attention.dense.weight",
            (d, q),
            (Part("layers.attn.out.kernel", transpose=True),),
        ),
        Entry(lay + "post_attention_layernorm.weight", (d,), (Part("layers.mlp_norm.scale"),)),
        Entry(
            lay + "mlp.dense_h_to_4h.weight",
            (2 * f, d),
            (
                Part("layers.mlp.gate.kernel", (0, f), transpose=True),
                Part("layers.mlp.up.kernel", (f, 2 * f), transpose=True),
            ),
        ),
        Entry(
            lay + "mlp.dense_4h_to_h.weight",
            (d, f),
            (Part("layers.mlp.down.kernel", transpose=True),),
        ),
        Entry("transformer.encoder.final_layernorm.weight", (d,), (Part("final_norm.scale"),)),
        Entry(
            "transformer.output_layer.weight",
            (v, d),
            (Part("head.kernel", transpose=True, vocab=True),),
        ),
    ]
    return table


def inv_freq(kv_channels: int, dtype: str) -> np.ndarray:
    """The reference buffer: 1 / 10000 ** (arange(0, d, 2) / d), d = kv_channels // 2.

    Computed op by op in ``dtype`` as torch does (each op in float32, rounded to a 16-bit dtype).
    """
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)

    def r(x):
        return np.asarray(x, np.float32).astype(dt).astype(np.float32)

    d = kv_channels // 2
    t = r(r(np.arange(0, d, 2)) / np.float32(d))
    p = r(np.power(np.float32(10000.0), t, dtype=np.float32))
    return r(np.float32(1.0) / p).astype(dt)


def extra_tensors(cfg: glm.GLMConfig, dtype: str) -> dict[str, np.ndarray]:
    return {INV_FREQ: inv_freq(cfg.head_dim, dtype)}


def hf_config(cfg: glm.GLMConfig, dtype: str, base: Mapping | None) -> dict:
    """config.json for ``cfg``: the imported one (``base``) with the math fields set."""
    out = dict(_TEMPLATE)
    out.update(base or {})
    out.update(
        num_layers=cfg.num_layers,
        num_hidden_layers=cfg.num_layers,
        hidden_size=cfg.embed_dim,
        ffn_hidden_size=cfg.mlp_dim,
        num_attention_heads=cfg.num_heads,
        kv_channels=cfg.head_dim,
        multi_query_attention=cfg.num_kv_heads != cfg.num_heads,
        multi_query_group_num=cfg.num_kv_heads,
        padded_vocab_size=cfg.vocab_size,
        vocab_size=cfg.vocab_size,
        layernorm_epsilon=cfg.norm_eps,
        rope_ratio=int(cfg.rope_ratio) if float(cfg.rope_ratio).is_integer() else cfg.rope_ratio,
        add_qkv_bias=cfg.qkv_bias,
        torch_dtype=dtype,
    )
    if cfg.rotary_fraction != 0.5:
        raise ValueError(
            f"the chatglm layout rotates half of each head (rotary_fraction 0.5); this model has "
            f"{cfg.rotary_fraction}: export with --format transformers"
        )
    return out


FORMAT = glm_weights.Format(
    name="chatglm",
    architectures=ARCHITECTURES,
    config_from_hf=config_from_hf,
    rename_table=rename_table,
    hf_config=hf_config,
    extra_tensors=extra_tensors,
    ignored=(INV_FREQ,),
)
