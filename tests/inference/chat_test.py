"""glmvoice_jax.inference.chat: audio -> audio on tiny models, the templates, bad input."""

import dataclasses
import os

import numpy as np
import pytest
import soundfile as sf

from glmvoice_jax import checkpoint, errors
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.data import token_layout
from glmvoice_jax.inference import chat, engine, speech_stream
from glmvoice_jax.inference.chat_template import ChatTemplate, UserTurn
from glmvoice_jax.models.speech_decoder import config as decoder_config
from glmvoice_jax.models.speech_decoder.stream import stream_decode

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
TOKENIZER = os.path.join(FIXTURES, "whisper_vq")  # a tiny released-layout tokenizer, 64 codes
QUESTION = os.path.join(TOKENIZER, "audio", "v1_fox.wav")
CONFIG = engine.EngineConfig(dtype="float32", max_context=512, batch_size=1, steps_per_call=1)


def _decoder(path, codes=64):
    """An untrained decoder of the ``tiny`` preset with ``codes`` speech codes."""
    cfg = decoder_config.VARIANTS["tiny"]
    cfg = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, vocab_size=codes))
    decoder_checkpoint.write_untrained(cfg, path)
    return str(path)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return _decoder(tmp_path_factory.mktemp("dec") / "ckpt")


@pytest.fixture(scope="module")
def models(tiny_lm, decoder):
    return chat.load(tiny_lm, TOKENIZER, decoder, CONFIG, devices=None)


def test_speech_in_speech_out_with_timings(models, tmp_path):
    sampling = engine.SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24)
    room = chat.speech_room(models, [], sampling.max_new_tokens)
    user = UserTurn(speech=chat.read_speech(QUESTION, models, room))
    wav = str(tmp_path / "turn.wav")
    turn = chat.respond(models, user, [], sampling=sampling, seed=3, wav_path=wav)
    assert models.template.kind == "base"  # the demo layout has no chat roles
    # The tiny LM writes a text answer, then speaks it: only codes the decoder knows.
    assert turn.reply_codes and max(turn.reply_codes) < 64
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 22050 and audio.size == round(turn.timings["audio_secs"] * rate)
    assert np.isfinite(audio).all() and not os.path.exists(wav + ".partial.wav")
    # Streamed block by block (10, then 25, ...) as the codes came: the same audio as decoding
    # the finished reply with the same blocks.
    whole, _ = stream_decode(models.decoder, turn.reply_codes, speech_stream.CHAT_BLOCK_SIZES)
    if len(turn.reply_codes) not in (10, 35):  # no block boundary: both finalize the rest
        np.testing.assert_allclose(audio, whole, atol=1e-6)
    t = turn.timings
    assert 0 < t["first_token_secs"] <= t["first_speech_token_secs"] < t["first_audio_secs"]
    assert t["first_text_token_secs"] is not None or t["text_tokens"] == 0
    assert t["tokens_per_sec"] > 0 and t["new_tokens"] == t["text_tokens"] + t["speech_tokens"]
    assert [c["codes"] for c in t["decoder_calls"]][:1] == [min(10, len(turn.reply_codes))]
    again = chat.respond(models, user, [], sampling=sampling, seed=3, wav_path=wav)
    assert again.reply_codes == turn.reply_codes and again.reply_text == turn.reply_text


def _byte_template(layout):
    return ChatTemplate.for_layout(layout, lambda s: list(s.encode()))


def test_chat_template_ids_come_from_the_layout():
    specials = token_layout.get("demo").specials + (
        ("<|system|>", 261),
        ("<|user|>", 262),
        ("<|assistant|>", 263),
    )
    lay = dataclasses.replace(token_layout.get("demo"), name="demo_chat", specials=specials)
    tmpl = _byte_template(lay)
    assert tmpl.kind == "chat" and tmpl.stop_ids == (262, 256)
    first = tmpl.chat_prompt([], UserTurn(speech=np.array([1, 2])), "Be brief.")
    boa, eoa = lay.special("<|begin_of_audio|>"), lay.special("<|end_of_audio|>")
    want = (
        lay.bos_ids + [261] + list(b"\nBe brief.") + [262] + list(b"\n")
        + [boa, 513, 514, eoa] + [263] + list(b"streaming_transcription\n")
    )  # fmt: skip
    assert first == want
    reply = [65, 700, 701]
    second = tmpl.chat_prompt(first + reply, UserTurn(text="hi"), None)
    assert second == first + reply + [262] + list(b"\nhi") + [263] + list(
        b"streaming_transcription\n"
    )
    with pytest.raises(ValueError, match="lacks"):
        ChatTemplate.for_layout(token_layout.get("demo"), lambda s: [], "chat")


def test_bad_wavs_are_refused_naming_the_file_and_the_limit(models, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(errors.UserError, match="notes.wav"):
        chat.read_speech(str(bad), models, 100)
    quiet = str(tmp_path / "quiet.wav")
    sf.write(quiet, np.zeros(16000, np.float32), 16000)
    with pytest.raises(errors.UserError, match=r"quiet.wav' is silent .* -80 dBFS"):
        chat.read_speech(quiet, models, 100)
    with pytest.raises(errors.UserError, match=r"v1_fox.wav' lasts .* room for 3 tokens"):
        chat.read_speech(QUESTION, models, 3)


def test_mismatched_checkpoints_are_refused_naming_both(tiny_lm, decoder, tmp_path, write_lm):
    small_decoder = _decoder(tmp_path / "dec32", codes=32)
    with pytest.raises(
        errors.UserError, match=f"decoder {small_decoder} knows 32 codes.*{TOKENIZER}"
    ):
        chat.load(tiny_lm, TOKENIZER, small_decoder, CONFIG)
    few = write_lm(str(tmp_path / "lm32"), token_layout.demo_layout(32))
    with pytest.raises(errors.UserError, match=f"{TOKENIZER} has 64 codes but LM checkpoint {few}"):
        chat.load(few, TOKENIZER, decoder, CONFIG)
    meta = checkpoint.read_meta(tiny_lm)
    meta.pop("token_layout")
    bare = str(tmp_path / "bare")
    params = checkpoint.restore_params(tiny_lm, None)
    checkpoint.write_weights(bare, params, meta)
    with pytest.raises(errors.UserError, match=f"LM checkpoint {bare} records no token layout"):
        chat.load(bare, TOKENIZER, decoder, CONFIG)
