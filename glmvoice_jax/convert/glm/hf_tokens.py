"""Token ids and text tokenizers of an HF export, all read from the checkpoint's token layout.

The token layout (glmvoice_jax/data/token_layout.py) is the one owner of the ids; this module
only spells them the way Hugging Face clients read them:

* ``config.json`` / ``generation_config.json``: ``eos_token_id`` = ``<|endoftext|>`` plus the
  chat stop ids the layout has (``<|user|>``, ``<|observation|>``: a GLM-4 chat reply ends when
  the model hands the turn back, as glm-4-9b-chat's config lists [151329, 151336, 151338]);
  ``pad_token_id`` = ``<|endoftext|>`` (GLM-4's choice); ``bos_token_id`` = ``[gMASK]``, the first
  of the two prefix tokens every document starts with (``[gMASK]<sop>``; transformers has one
  bos id, the tokenizer below adds both). Without these ids transformers falls back to GLM-4's
  151329 and a small vocabulary fails to load ("Padding_idx must be within num_embeddings").
* The text tokenizer, where a transformers equivalent exists:

  - the demo layouts (``demo``, ``demo_chat``, ``demo<K>``: text ids 0..255 are UTF-8 bytes) ->
    a ``tokenizer.json`` for ``PreTrainedTokenizerFast``: a byte-level BPE without merges whose
    256 tokens are the byte values (GPT-2's byte -> printable-character map, so ids equal bytes),
    no splitting, the specials and ``<|audio_k|>`` as added tokens (``<|unused_i|>`` on ids no
    token uses, so the tokenizer has the model's vocab_size), and ``[gMASK]<sop>`` prepended
    by the post-processor, as glmvoice-score's text input and the trainers' records do;
  - a GLM-4 tokenizer imported with its HF files (tokenizer.json or tokenizer.model with
    tokenization_chatglm.py): copied as imported (glm_weights.export_glm);
  - no equivalent is written for a SentencePiece model trained here or a checkpoint that records
    no tokenizer and has no byte layout: glmvoice-export says so in a note, and clients pass ids.
"""

from __future__ import annotations

from glmvoice_jax.data import token_layout as token_layout_lib

CHAT_STOPS = ("<|user|>", "<|observation|>")


def token_ids(layout: token_layout_lib.TokenLayout) -> dict:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of ``layout`` (those it has)."""
    names = {t for t, _ in layout.specials}
    out: dict = {}
    if token_layout_lib.BOS[0] in names:
        out["bos_token_id"] = layout.special(token_layout_lib.BOS[0])
    if token_layout_lib.EOS in names:
        stops = [layout.eos_id] + [layout.special(t) for t in CHAT_STOPS if t in names]
        out["eos_token_id"] = stops[0] if len(stops) == 1 else stops
        out["pad_token_id"] = layout.eos_id
    return out


def ids_fit(value, vocab_size: int) -> bool:
    """An HF token id field (int, list of ints or None) that lies inside the vocabulary."""
    if value is None:
        return False
    values = value if isinstance(value, list) else [value]
    return all(isinstance(v, int) and 0 <= v < vocab_size for v in values)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel pre-tokenizer's)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _added(token: str, i: int) -> dict:
    return {
        "id": i,
        "content": token,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def byte_tokenizer_files(layout: token_layout_lib.TokenLayout) -> dict[str, dict]:
    """{file name: JSON} of a ``PreTrainedTokenizerFast`` for a UTF-8 byte layout.

    encode(text) = [gMASK] <sop> + the text's UTF-8 bytes (ids 0..255); decode inverts it.
    """
    if not layout.text_is_utf8_bytes:
        raise ValueError(f"token layout {layout.name!r} is not a UTF-8 byte layout")
    specials = list(layout.specials) + [
        (f"<|audio_{k}|>", layout.audio_offset + k) for k in range(layout.num_audio_tokens)
    ]
    byte_chars = _bytes_to_unicode()
    # Every id of the vocabulary is in the model's vocab: the bytes, the specials and speech
    # tokens (tokenizers gives an added token the id its content has in the vocab, else the next
    # free one, so ids with gaps must be there) and "<|unused_i|>" for rows no token uses. A BPE
    # without merges only ever emits single bytes, so the longer entries come from added tokens.
    vocab = {byte_chars[b]: b for b in range(256)}
    vocab.update({t: i for t, i in specials})
    used = set(vocab.values())
    vocab.update({f"<|unused_{i}|>": i for i in range(layout.vocab_size) if i not in used})
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    prefix = [t for t in token_layout_lib.BOS if t in {s for s, _ in layout.specials}]

    def special(t):
        return {"SpecialToken": {"id": t, "type_id": 0}}

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(t, i) for t, i in specials],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(t) for t in prefix] + [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [special(t) for t in prefix]
            + [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                t: {"id": t, "ids": [layout.special(t)], "tokens": [t]} for t in prefix
            },
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    names = {t for t, _ in layout.specials}
    roles = {}
    if token_layout_lib.EOS in names:
        roles = {"eos_token": token_layout_lib.EOS, "pad_token": token_layout_lib.EOS}
    if prefix:
        roles["bos_token"] = prefix[0]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(i): {**_added(t, i), "id": None} for t, i in specials},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "left",
        **roles,
    }
    for v in config["added_tokens_decoder"].values():
        del v["id"]
    return {
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": config,
        "special_tokens_map.json": roles,
    }
