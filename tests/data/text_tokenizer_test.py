"""Text tokenizers: GLM-4 tiktoken-format BPE (generated tokenizer.model) and SentencePiece."""

import collections
import json
import os
import shutil

import pytest
import regex

from glmvoice_jax import checkpoint, config_lib
from glmvoice_jax.convert.glm import chatglm, glm_weights
from glmvoice_jax.data import text_tokenizer
from glmvoice_jax.inference import scoring

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12345 o'clock!\n",
    "Speech and text: we'll tokenize   spaces, tabs\tand newlines\r\n too.",
    "Unicode: naïve café, 你好世界, emoji 🙂, numbers 2024-11-25.",
    "the theory of the thing is that they thought the other thing.",
]
TEXTS = CORPUS + [
    "unseen words: xylophone quizzically; ÅNGSTRÖM\n\n\n  trailing  ",
    "specials inside <|user|> text<|assistant|>and [gMASK] here",
    "",
]


def make_ranks(texts, merges: int) -> dict:
    """A small byte-level BPE vocabulary trained on ``texts`` (GLM-4 pre-tokenisation)."""
    ranks = {bytes([b]): b for b in range(256)}
    pat = regex.compile(text_tokenizer.GLM4_PATTERN)
    words = collections.Counter(p.encode() for t in texts for p in pat.findall(t))
    seqs = {w: [w[i : i + 1] for i in range(len(w))] for w in words}
    for _ in range(merges):
        pairs = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w, s in seqs.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return ranks


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    text_tokenizer.write_tiktoken_ranks(make_ranks(CORPUS, 120), str(path))
    return str(path)


def test_tiktoken_and_pure_python_agree_and_round_trip(model_file):
    fast = text_tokenizer.TiktokenTokenizer.from_file(model_file)
    slow = text_tokenizer.TiktokenTokenizer.from_file(model_file, use_tiktoken=False)
    assert text_tokenizer.tiktoken is not None, "tiktoken should be installed"
    assert fast._enc is not None and slow._enc is None
    for t in TEXTS:
        ids = fast.encode(t, add_prefix=False)
        assert ids == slow.encode(t, add_prefix=False), t
        assert fast.decode(ids) == t
    assert len(fast.encode(CORPUS[3], add_prefix=False)) < len(CORPUS[3].encode()) / 2  # merges


def test_glm4_prefix_and_specials(model_file):
    tok = text_tokenizer.TiktokenTokenizer.from_file(model_file)
    ids = tok.encode("hi <|user|>")
    assert ids[:2] == [151331, 151333]  # [gMASK] <sop>
    assert ids[-1] == 151336  # <|user|>
    assert tok.decode(ids[2:]) == "hi <|user|>"
    assert tok.vocab_size == 151343
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.decode([140000])


def test_file_kinds_and_errors(tmp_path, model_file):
    assert text_tokenizer.detect_kind(model_file) == "tiktoken"
    spm = text_tokenizer.SentencePieceTokenizer.train(CORPUS * 20, vocab_size=400)
    meta = spm.save(str(tmp_path / "spm"))
    assert text_tokenizer.detect_kind(str(tmp_path / "spm" / "tokenizer.model")) == "sentencepiece"
    bad = tmp_path / "bad.model"
    bad.write_text("YQ== 0\nnot a line\n")
    with pytest.raises(ValueError, match=r"bad.model line 2"):
        text_tokenizer.read_tiktoken_ranks(str(bad))
    gap = tmp_path / "gap.model"
    gap.write_text("YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match="without gaps"):
        text_tokenizer.read_tiktoken_ranks(str(gap))
    with pytest.raises(ValueError, match="unknown|cannot be loaded"):
        text_tokenizer.from_meta({"kind": "wordpiece"}, str(tmp_path))
    assert meta["kind"] == "sentencepiece"


def test_sentencepiece_train_save_load(tmp_path):
    tok = text_tokenizer.SentencePieceTokenizer.train(CORPUS * 20, vocab_size=400, prefix_ids=[2])
    meta = tok.save(str(tmp_path))
    again = text_tokenizer.from_meta(meta, str(tmp_path))
    for t in TEXTS:
        ids = again.encode(t)
        assert ids == tok.encode(t) and ids[0] == 2
        assert again.decode(ids[1:]) == t
    assert again.vocab_size == 400


def test_checkpoint_records_and_scores_text(tmp_path):
    """An HF dir with tokenizer.model + tokenizer_config.json: import, reload, score "text"."""
    src = tmp_path / "src"
    shutil.copytree(os.path.join(FIXTURES, "glm_chatglm"), src)
    os.chmod(src, 0o755)
    text_tokenizer.write_tiktoken_ranks(make_ranks(CORPUS, 100), str(src / "tokenizer.model"))
    specials = {"<|endoftext|>": 600, "[gMASK]": 601, "<sop>": 602, "<|user|>": 603}
    cfg = {"added_tokens_decoder": {str(i): {"content": t} for t, i in specials.items()}}
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    ck = tmp_path / "ck"
    meta = glm_weights.import_glm(str(src), str(ck), chatglm.FORMAT)
    assert meta["tokenizer"]["kind"] == "tiktoken"
    assert meta["token_layout"]["text_vocab_size"] == 600
    tok = checkpoint.text_tokenizer(str(ck))
    assert tok.encode("the fox")[:2] == [601, 602]

    inp = tmp_path / "in.jsonl"
    ids = tok.encode("the quick brown fox <|user|>")
    inp.write_text(json.dumps({"id": "t", "text": "the quick brown fox <|user|>"}) + "\n")
    inp2 = tmp_path / "in2.jsonl"
    inp2.write_text(json.dumps({"id": "t", "ids": ids}) + "\n")
    scoring.score_file(str(ck), str(inp), str(tmp_path / "a.jsonl"))
    scoring.score_file(str(ck), str(inp2), str(tmp_path / "b.jsonl"))
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.jsonl", "b.jsonl"))
    assert len(a["token_logprobs"]) == len(ids) - 1
    assert a == b

    out = tmp_path / "hf"
    files = glm_weights.export_glm(str(ck), str(out), chatglm.FORMAT)
    assert {"tokenizer.model", "tokenizer_config.json"} <= set(files)
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


def test_tokenizer_files_on_a_gs_bucket(fake_gcs, model_file):
    """Tokenizers save to and load from gs:// (a checkpoint or tokenizer workdir on a bucket)."""
    tik = text_tokenizer.TiktokenTokenizer.from_file(model_file)
    spm = text_tokenizer.SentencePieceTokenizer.train(CORPUS * 20, vocab_size=400, prefix_ids=[2])
    for name, tok in (("tik", tik), ("spm", spm)):
        meta = tok.save(f"gs://bucket/ckpt/{name}")
        assert text_tokenizer.detect_kind(f"gs://bucket/ckpt/{name}/tokenizer.model") == tok.kind
        again = text_tokenizer.from_meta(meta, f"gs://bucket/ckpt/{name}")
        for t in TEXTS:
            assert again.encode(t) == tok.encode(t)
    assert any(k.endswith("ckpt/spm/tokenizer.model") for k in fake_gcs)


def test_speech_tokenizer_text_side_and_workdir_on_gs(fake_gcs):
    """The speech-tokenizer trainer's own files (tokenizer, meta) go through epath to gs://."""
    from glmvoice_jax.trainers import loop
    from glmvoice_jax.trainers import speech_tokenizer_setup as setup

    loop.check_workdir("gs://bucket/run")
    config = config_lib.load_config_file(os.path.join(REPO, "configs", "tokenizer_12hz.py:tiny"))
    made = setup.text_side(config, "gs://bucket/run/checkpoints", CORPUS * 20)
    assert any(k.endswith("run/checkpoints/tokenizer/meta.json") for k in fake_gcs)
    loaded = setup.text_side(config, "gs://bucket/run/checkpoints", ["unused when resuming"])
    assert loaded.encode(TEXTS[0]) == made.encode(TEXTS[0]) and loaded.meta == made.meta
    config.input.espeak_corpus_dir = "{workdir}/espeak"
    with pytest.raises(ValueError, match="not a local directory"):
        setup.manifests(config, "gs://bucket/run")
