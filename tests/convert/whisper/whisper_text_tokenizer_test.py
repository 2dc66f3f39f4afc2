"""The Whisper text tokenizer read from HF files (vocab.json + added tokens) as byte-level BPE."""

import json

import pytest

from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper


def _write(tmp_path, vocab, added):
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    return str(tmp_path)


def test_byte_level_bpe_and_prefix(tmp_path):
    # GPT-2 byte aliases: "Ġ" is the space byte. Ranks: bytes first, then merges by id.
    letters = "abcdehlorstw"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({"Ġ": 12, "he": 13, "ll": 14, "hell": 15, "hello": 16, "Ġw": 17, "or": 18})
    added = {"<|endoftext|>": 19, "<|startoftranscript|>": 20, "<|en|>": 21,
             "<|transcribe|>": 22, "<|notimestamps|>": 23}  # fmt: skip
    tok = convert_whisper.load_text_tokenizer(_write(tmp_path, vocab, added))
    ids = tok.encode("hello world", add_prefix=False)
    assert ids == [16, 17, 18, vocab["l"], vocab["d"]]
    assert tok.decode(ids) == "hello world"
    assert tok.encode("hello")[:4] == [20, 21, 22, 23]
    assert tok.specials[convert_whisper.WHISPER_EOS] == 19


def test_missing_files_and_specials(tmp_path):
    with pytest.raises(ValueError, match="vocab.json"):
        convert_whisper.load_text_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="special tokens"):
        convert_whisper.load_text_tokenizer(_write(tmp_path, {"a": 0}, {"<|endoftext|>": 1}))
