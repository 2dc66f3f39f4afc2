"""Export token ids / tokenizer files from the token layout (issue 17 item 7), without transformers.

The golden check with transformers itself is transformers_client_test.py (dev-only extra).
"""

import json
import os

from glmvoice_jax.cli import export_checkpoint
from glmvoice_jax.convert.glm import hf_tokens
from glmvoice_jax.data import token_layout


def test_ids_from_layouts():
    assert hf_tokens.token_ids(token_layout.get("glm4_voice")) == {
        "bos_token_id": 151331,
        "eos_token_id": [151329, 151336, 151338],
        "pad_token_id": 151329,
    }
    assert hf_tokens.token_ids(token_layout.get("demo")) == {
        "bos_token_id": 257,
        "eos_token_id": 256,
        "pad_token_id": 256,
    }
    assert hf_tokens.token_ids(token_layout.get("demo_chat"))["eos_token_id"] == [256, 262]
    assert hf_tokens.ids_fit([256, 262], 1024) and not hf_tokens.ids_fit(151329, 1024)
    assert not hf_tokens.ids_fit(None, 1024)


def test_byte_tokenizer_maps_every_byte_to_its_id():
    files = hf_tokens.byte_tokenizer_files(token_layout.get("demo_chat"))
    vocab = files["tokenizer.json"]["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(1024))
    assert [vocab[chr(c)] for c in b"abc"] == list(b"abc") and vocab["<|audio_0|>"] == 512
    added = {t["content"]: t["id"] for t in files["tokenizer.json"]["added_tokens"]}
    assert added["<|user|>"] == 262 and added["<|audio_511|>"] == 1023
    assert files["special_tokens_map.json"] == {
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": "[gMASK]",
    }


def test_export_of_a_model_trained_here(write_lm, tmp_path, capsys):
    """A demo-layout checkpoint (no imported config) exports ids inside its 1,024-row vocab."""
    ckpt = write_lm(str(tmp_path / "ckpt"), "demo_chat")
    out = tmp_path / "hf"
    files = export_checkpoint.main(
        ["glmvoice-export", f"--checkpoint={ckpt}", f"--output={out}", "--format=transformers"]
    )
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(files)
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == [256, 262] and config["pad_token_id"] == 256
    assert config["bos_token_id"] == 257 and config["vocab_size"] == 1024
    assert "transformers_version" not in config
    assert config["dtype"] == config["torch_dtype"] == "float32"
    assert json.loads((out / "generation_config.json").read_text()) == {
        "bos_token_id": 257,
        "eos_token_id": [256, 262],
        "pad_token_id": 256,
    }
    assert "note:" not in capsys.readouterr().err


def test_export_without_a_tokenizer_says_so(write_lm, tmp_path, capsys):
    # The demo ids under another name: not a UTF-8 byte layout, and no tokenizer recorded.
    layout = token_layout.TokenLayout.from_json({**token_layout.get("demo").to_json(), "name": "x"})
    ckpt = write_lm(str(tmp_path / "ckpt"), layout)
    out = tmp_path / "hf"
    files = export_checkpoint.main(
        ["glmvoice-export", f"--checkpoint={ckpt}", f"--output={out}", "--format=chatglm"]
    )
    assert not {"tokenizer.json", "tokenizer.model"} & set(files)
    assert "records no text tokenizer" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 256 and "transformers_version" not in config
    assert os.path.exists(out / "model.safetensors")
