r"""Dev-only: regenerate the GLM golden fixtures (tests/fixtures/glm_hf, glm_chatglm[_sharded]).

NEVER run by the tests, and not needed to use the project. Needs the `golden` extra:

    pip install "torch>=2.13" "transformers>=4.46.3" safetensors numpy
    python tests/golden/make_glm_goldens.py --out /tmp/goldens \
        [--chatglm_code DIR_WITH_modeling_chatglm.py_AND_configuration_chatglm.py]

What it does (this is how the shipped fixtures were made; see their README.md files):
1. Builds a random transformers ``GlmForCausalLM`` at the tiny config below (2 layers, d 64,
   F 112, 4 heads x 16, 2 KV heads, vocab 640, partial_rotary_factor 0.5, rope_theta 10000,
   eps 1.5625e-07), draws every Linear / embedding weight N(0, 0.08^2), the output layer
   N(0, 0.15^2), q/k/v biases N(0, 0.05^2) and RMSNorm weights N(1, 0.1^2) from a seeded torch
   generator, and saves it with ``save_pretrained`` -> ``glm_hf/``.
2. Writes the same weights in THUDM's chatglm layout -> ``glm_chatglm/`` (q/k/v fused into
   ``query_key_value`` rows [q | k | v], ``gate_up_proj`` kept as ``dense_h_to_4h`` [gate | up],
   names prefixed ``transformer.``, plus the ``rotary_pos_emb.inv_freq`` buffer) and the same
   tensors split into two shards with ``model.safetensors.index.json`` -> ``glm_chatglm_sharded/``.
3. Scores ``inputs.jsonl`` (ids uniform in [0, 640); lengths [320, 17, 5, 2] - the >= 300-token
   sequence is what catches partial-RoPE and position bugs) in float32:
   token_logprobs[i-1] = log_softmax(logits[i-1])[ids[i]], logprob = their float64 sum.
   With --chatglm_code the chatglm expected.jsonl comes from the reference remote code
   (``ChatGLMForConditionalGeneration.from_pretrained``, trust_remote_code); else from
   transformers Glm on the same weights (bitwise equal on the shipped fixtures).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GlmConfig, GlmForCausalLM

TINY = dict(
    vocab_size=640,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    partial_rotary_factor=0.5,
    rope_theta=10000.0,
    rms_norm_eps=1.5625e-07,
    attention_bias=True,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=[1, 2],
)
LENGTHS = [320, 17, 5, 2]


def random_glm(seed: int) -> GlmForCausalLM:
    torch.manual_seed(seed)
    model = GlmForCausalLM(GlmConfig(**TINY)).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model


def chatglm_state(model: GlmForCausalLM) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"]}
    d = TINY["head_dim"] // 2  # RotaryEmbedding(kv_channels // 2)
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
        10000 ** (torch.arange(0, d, 2).to(dtype=torch.float32) / d)
    )
    for i in range(TINY["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        a = src + "self_attn."
        out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "self_attention.query_key_value.weight"] = torch.cat(
            [sd[a + f"{p}_proj.weight"] for p in "qkv"]
        )
        out[dst + "self_attention.query_key_value.bias"] = torch.cat(
            [sd[a + f"{p}_proj.bias"] for p in "qkv"]
        )
        out[dst + "self_attention.dense.weight"] = sd[a + "o_proj.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.dense_h_to_4h.weight"] = sd[src + "mlp.gate_up_proj.weight"]
        out[dst + "mlp.dense_4h_to_h.weight"] = sd[src + "mlp.down_proj.weight"]
    out["transformer.encoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["transformer.output_layer.weight"] = sd["lm_head.weight"]
    return out


def chatglm_config() -> dict:
    c = TINY
    return {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "eos_token_id": c["eos_token_id"],
        "ffn_hidden_size": c["intermediate_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": c["hidden_size"],
        "kv_channels": c["head_dim"],
        "layernorm_epsilon": c["rms_norm_eps"],
        "multi_query_attention": True,
        "multi_query_group_num": c["num_key_value_heads"],
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_layers": c["num_hidden_layers"],
        "original_rope": True,
        "pad_token_id": c["pad_token_id"],
        "padded_vocab_size": c["vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": 1,
        "seq_length": c["max_position_embeddings"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "vocab_size": c["vocab_size"],
    }


def score(model, seqs) -> list[dict]:
    rows = []
    with torch.no_grad():
        for sid, ids in seqs:
            logits = model(torch.tensor([ids])).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            tok = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
            rows.append(
                {"id": sid, "logprob": float(np.sum(tok, dtype=np.float64)), "token_logprobs": tok}
            )
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--chatglm_code", default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    seqs = [(f"c0_len{n}", rng.integers(0, TINY["vocab_size"], n).tolist()) for n in LENGTHS]
    model = random_glm(a.seed)

    hf = os.path.join(a.out, "glm_hf")
    model.save_pretrained(hf, safe_serialization=True)
    write_jsonl(os.path.join(hf, "inputs.jsonl"), [{"id": i, "ids": s} for i, s in seqs])
    write_jsonl(os.path.join(hf, "expected.jsonl"), score(model, seqs))

    cg = os.path.join(a.out, "glm_chatglm")
    os.makedirs(cg, exist_ok=True)
    state = chatglm_state(model)
    save_file(state, os.path.join(cg, "model.safetensors"), metadata={"format": "pt"})
    pathlib.Path(os.path.join(cg, "config.json")).write_text(json.dumps(chatglm_config(), indent=2))
    write_jsonl(os.path.join(cg, "inputs.jsonl"), [{"id": i, "ids": s} for i, s in seqs])
    ref = model
    if a.chatglm_code:
        from transformers import AutoModelForCausalLM

        for f in ("modeling_chatglm.py", "configuration_chatglm.py"):
            shutil.copy(os.path.join(a.chatglm_code, f), cg)
        ref = AutoModelForCausalLM.from_pretrained(
            cg, trust_remote_code=True, torch_dtype=torch.float32
        ).eval()
    write_jsonl(os.path.join(cg, "expected.jsonl"), score(ref, seqs))

    sh = os.path.join(a.out, "glm_chatglm_sharded")
    os.makedirs(sh, exist_ok=True)
    names = list(state)
    half = len(names) // 2
    weight_map, total = {}, 0
    for k, part in enumerate((names[:half], names[half:]), 1):
        fname = f"model-0000{k}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, os.path.join(sh, fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
        total += sum(state[n].numel() * state[n].element_size() for n in part)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    pathlib.Path(os.path.join(sh, "model.safetensors.index.json")).write_text(
        json.dumps(index, indent=2)
    )
    for f in ("config.json", "inputs.jsonl", "expected.jsonl"):
        shutil.copy(os.path.join(cg, f), sh)


if __name__ == "__main__":
    main()
