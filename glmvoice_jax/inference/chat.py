"""Speech in, speech out: the library behind ``glmvoice-chat``.

One turn: a wav (or text) -> the speech tokenizer -> the conversation template (chat_template.py,
ids from the LM checkpoint's token layout) -> the generation engine (engine.py) -> speech codes
streamed to the speech decoder as they arrive (speech_stream.py: first block of 10 codes, then
growing) -> an output wav written chunk by chunk, the text transcript, and a record of timings:

  tokenize_secs            reading + tokenizing the input
  first_token_secs         turn start -> the first generated token on the host
  first_text_token_secs    ... the first text token (None if the reply has none)
  first_speech_token_secs  ... the first speech token
  first_audio_secs         ... the first audio sample written (the latency a listener hears)
  generate_secs            generation, prefill included
  tokens_per_sec           generated tokens / generate_secs
  audio_secs, total_secs

The first turn of a process includes compilation (``compiled_in_turn`` says so). The session is a
JSONL file, one line per turn (``Turn.to_json``); the chat template continues it from the ids of
the earlier turns.

The three checkpoints must agree on the speech vocabulary: the tokenizer's codebook must fit the
LM layout's speech ids, and the decoder must know every code of it; the LM may then choose only
the codes the tokenizer and decoder share (EngineConfig.speech_codes). Anything else is refused,
naming both checkpoints.

Axes: none (host-side orchestration).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import soundfile as sf

from glmvoice_jax import audio, checkpoint, errors, files
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.inference import engine as engine_lib
from glmvoice_jax.inference import speech_stream, speech_tokenization
from glmvoice_jax.inference.chat_template import ChatTemplate, UserTurn
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder
from glmvoice_jax.models.whisper_vq import WhisperVQ

SILENT_PEAK = 1e-4  # -80 dBFS (glmvoice-tokenize's default): a quieter input holds no speech


@dataclasses.dataclass
class ChatModels:
    """The LM engine, its template, the speech tokenizer and the decoder, checked to agree."""

    engine: engine_lib.Engine
    template: ChatTemplate
    tokenizer: WhisperVQ
    decoder: SpeechDecoder
    decode_text: Callable[[Sequence[int]], str]
    paths: dict[str, str]

    @property
    def layout(self):
        return self.engine.layout


def text_codec(lm: str | None, layout) -> tuple[Callable, Callable]:
    """(encode, decode) of the LM's text: its recorded tokenizer, or UTF-8 bytes (demo layout)."""
    tok = checkpoint.text_tokenizer(lm) if lm else None
    if tok is not None:
        return (lambda s: tok.encode(s, add_prefix=False)), tok.decode
    if layout.text_is_utf8_bytes:
        return (lambda s: list(s.encode("utf-8"))), (
            lambda ids: bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        )
    raise errors.UserError(
        f"LM checkpoint {lm} records no text tokenizer and its layout {layout.name!r} is not a "
        "UTF-8 byte layout; import it with its tokenizer files (glmvoice-import)"
    )


def load(
    lm: str,
    tokenizer: str,
    decoder: str,
    config: engine_lib.EngineConfig | None = None,
    *,
    template: str = "auto",
    devices: Sequence[jax.Device] | None = None,
) -> ChatModels:
    """Loads and cross-checks the three checkpoints.

    Args:
      lm: GLM checkpoint (with a token layout in its meta).
      tokenizer: speech-tokenizer checkpoint (Orbax or the released HF directory).
      decoder: speech-decoder checkpoint (Orbax or the released directory).
      config: engine settings (``speech_codes`` is set here).
      template: "auto", "chat" or "base" (chat_template.py).
      devices: devices of the engine's mesh (default: all).

    Raises:
      errors.UserError: a checkpoint without a token layout or speech ids, or vocabularies that
        do not agree (naming both checkpoints).
    """
    config = config or engine_lib.EngineConfig()
    meta = checkpoint.read_meta(lm)
    if "token_layout" not in meta:
        raise errors.UserError(
            f"LM checkpoint {lm} records no token layout, so its speech ids are unknown; "
            "re-import it with glmvoice-import"
        )
    tok_cfg, tok_model = speech_tokenization.load_model(tokenizer)
    dec = decoder_checkpoint.load_any(decoder)
    from_meta = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
    lm_codes, tok_codes = from_meta.num_audio_tokens, tok_cfg.codebook_size
    dec_codes = dec.config.flow.vocab_size
    if lm_codes == 0:
        raise errors.UserError(
            f"LM checkpoint {lm} (layout {from_meta.name!r}) has no speech ids; chat needs a "
            "speech LM such as GLM-4-Voice-9B"
        )
    if tok_codes > lm_codes:
        raise errors.UserError(
            f"speech tokenizer {tokenizer} has {tok_codes} codes but LM checkpoint {lm} has only "
            f"{lm_codes} speech ids (layout {from_meta.name!r}): they were not trained together"
        )
    if dec_codes < tok_codes:
        raise errors.UserError(
            f"speech decoder {decoder} knows {dec_codes} codes but speech tokenizer {tokenizer} "
            f"has {tok_codes}: the decoder cannot speak every code the LM may produce"
        )
    config = dataclasses.replace(config, speech_codes=tok_codes)
    eng = engine_lib.Engine.from_checkpoint(lm, config, devices=devices)
    encode, decode = text_codec(lm, eng.layout)
    return ChatModels(
        engine=eng,
        template=ChatTemplate.for_layout(eng.layout, encode, template),
        tokenizer=tok_model,
        decoder=dec,
        decode_text=decode,
        paths={"lm": lm, "tokenizer": tokenizer, "decoder": decoder},
    )


def speech_room(
    models: ChatModels, history: Sequence[int], max_new_tokens: int, system: str | None = None
) -> int:
    """How many speech tokens the next user turn may have: context - conversation - reply."""
    one = UserTurn(speech=np.zeros(1, np.int32))
    if models.template.kind == "chat":
        fixed = len(models.template.chat_prompt(history, one, system)) - 1
    else:
        fixed = len(models.template.answer_prompt(one)) - 1
    return models.engine.config.max_context - max_new_tokens - fixed


def read_speech(path: str, models: ChatModels, max_tokens: int) -> np.ndarray:
    """A wav file -> speech codes, refusing unreadable, silent or too long audio by name.

    Args:
      path: the audio file (any rate / channels soundfile or librosa reads).
      models: the loaded models.
      max_tokens: the most speech tokens the conversation's context leaves for this input.

    Raises:
      errors.UserError: naming the file and the limit.
    """
    try:
        wav = audio.load_audio(path)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    peak = float(np.max(np.abs(wav)))
    if peak < SILENT_PEAK:
        raise errors.UserError(
            f"audio file {path!r} is silent (peak amplitude {peak:.1e}, below {SILENT_PEAK:g} = "
            "-80 dBFS); record the question again"
        )
    per_token = models.tokenizer.config.samples_per_token
    n_tokens = -(-wav.size // per_token)
    if n_tokens > max_tokens:
        rate = audio.SAMPLE_RATE / per_token
        raise errors.UserError(
            f"audio file {path!r} lasts {wav.size / audio.SAMPLE_RATE:.1f} s = {n_tokens} speech "
            f"tokens at {rate:g} Hz, but the context leaves room for {max_tokens} tokens "
            f"({max_tokens / rate:.1f} s); trim the file, lower --max_new_tokens or start a new "
            "session"
        )
    return speech_tokenization.tokenize_waveforms(models.tokenizer, [wav])[0]


@dataclasses.dataclass
class Turn:
    """One exchange: what was said, what came back, and how long it took."""

    number: int
    user: dict
    user_codes: list[int]
    reply_text: str
    reply_codes: list[int]
    ids: list[int]  # the ids this turn adds to the conversation (chat template)
    stop_id: int | None
    truncated: bool
    wav: str
    timings: dict
    layout: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _Clock:
    """First-event times of a turn, relative to its start (thread-safe: audio has its own)."""

    def __init__(self, start: float):
        self.start = start
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, name: str) -> None:
        with self._lock:
            self.marks.setdefault(name, time.perf_counter() - self.start)


def respond(
    models: ChatModels,
    user: UserTurn,
    history: Sequence[int],
    *,
    sampling: engine_lib.SamplingParams,
    seed: int,
    wav_path: str,
    number: int = 1,
    user_record: dict | None = None,
    system: str | None = None,
    start: float | None = None,
    noise_key: jax.Array | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Turn:
    """Generates the reply to one user turn and writes its audio to ``wav_path`` as it comes.

    Args:
      models: from ``load``.
      user: speech codes or text.
      history: ids of the earlier turns (chat template; ignored by the base template).
      sampling: temperature, top-p, ..., ``max_new_tokens`` (modality and stops are the
        template's).
      seed: the generation seed.
      wav_path: where the reply's audio goes (written chunk by chunk, renamed when complete).
      number: the turn's number in the session.
      user_record: how the session file describes the input (e.g. {"audio": path}).
      system: system prompt of a new chat session (None: the release's).
      start: perf_counter time the turn began (default: now); timings are relative to it.
      noise_key: the decoder's noise key (None: deterministic decoding).
      on_text: called with each new piece of reply text (a console echo).

    Raises:
      errors.UserError: the prompt does not fit the engine's context.
    """
    clock = _Clock(start if start is not None else time.perf_counter())
    eng, tmpl, lay = models.engine, models.template, models.layout
    text_ids: list[int] = []
    codes: list[int] = []
    sample_rate = models.decoder.config.hift.sampling_rate
    gen_start = time.perf_counter()
    with (
        files.atomic(wav_path, ".partial.wav") as tmp,
        sf.SoundFile(tmp, "w", sample_rate, 1, subtype="FLOAT", format="WAV") as out,
    ):

        def on_audio(samples: np.ndarray) -> None:
            if samples.size:
                clock.mark("first_audio_secs")
            out.write(samples)

        stream = speech_stream.SpeechStream(models.decoder, on_audio, key=noise_key)

        def on_tokens(_: int, ids: np.ndarray) -> None:
            clock.mark("first_token_secs")
            speech = np.asarray(lay.is_audio(ids), bool)
            if (~speech).any():
                clock.mark("first_text_token_secs")
                new = [int(i) for i in ids[~speech] if i < lay.text_vocab_size]
                text_ids.extend(new)
                if on_text is not None and new:
                    on_text(models.decode_text(new))
            if speech.any():
                clock.mark("first_speech_token_secs")
                new_codes = lay.ids_to_codes(ids[speech])
                codes.extend(int(c) for c in new_codes)
                stream.push(new_codes)

        try:
            if tmpl.kind == "chat":
                prompt = tmpl.chat_prompt(history, user, system)
                params = dataclasses.replace(
                    sampling, modality="interleave", stop_ids=tmpl.stop_ids
                )
                done = _generate(eng, prompt, params, seed, on_tokens)
                turn_ids = prompt[len(history) :] + done.tokens.tolist()
            else:
                answer = _generate(
                    eng,
                    tmpl.answer_prompt(user),
                    dataclasses.replace(
                        sampling, modality="text", stop_ids=(lay.eos_id,), min_new_tokens=1
                    ),
                    seed,
                    on_tokens,
                )
                speak = tmpl.speak_prompt(answer.tokens)
                room = eng.config.max_context - len(speak)
                done = _generate(
                    eng,
                    speak,
                    dataclasses.replace(
                        sampling,
                        modality="speech",
                        stop_ids=(lay.special("<|end_of_audio|>"),),
                        min_new_tokens=1,
                        max_new_tokens=max(1, min(sampling.max_new_tokens, room)),
                    ),
                    seed,
                    on_tokens,
                )
                turn_ids = []
        finally:
            stream.finish()
    generate_secs = time.perf_counter() - gen_start
    total = time.perf_counter() - clock.start
    n_new = len(text_ids) + len(codes)
    timings = {
        "first_token_secs": None,
        "first_text_token_secs": None,
        "first_speech_token_secs": None,
        "first_audio_secs": None,
        **clock.marks,
        "generate_secs": generate_secs,
        "new_tokens": n_new,
        "text_tokens": len(text_ids),
        "speech_tokens": len(codes),
        "tokens_per_sec": n_new / max(generate_secs, 1e-9),
        "audio_secs": stream.samples / sample_rate,
        "decoder_calls": [{"codes": n, "secs": s} for n, s in stream.chunks],
        "total_secs": total,
    }
    return Turn(
        number=number,
        user=user_record or ({"text": user.text} if user.text is not None else {}),
        user_codes=[] if user.speech is None else [int(c) for c in user.speech],
        reply_text=models.decode_text(text_ids),
        reply_codes=codes,
        ids=[int(i) for i in turn_ids],
        stop_id=done.stop_id,
        truncated=done.truncated,
        wav=os.path.abspath(wav_path),
        timings=timings,
        layout=lay.name,
    )


def _generate(eng, prompt, params, seed, on_tokens) -> engine_lib.Completion:
    total = len(prompt) + params.max_new_tokens
    if total > eng.config.max_context:
        raise errors.UserError(
            f"the conversation so far ({len(prompt)} tokens) + max_new_tokens "
            f"({params.max_new_tokens}) exceeds the context of {eng.config.max_context} tokens; "
            "start a new session or lower --max_new_tokens"
        )
    [done] = eng.generate([engine_lib.Request(prompt, params, seed)], on_tokens=on_tokens)
    return done


def read_session(path: str, models: ChatModels) -> tuple[list[dict], list[int]]:
    """The turns of a session file and the conversation ids they add up to.

    Raises:
      errors.UserError: a malformed line, or a session recorded with another LM layout.
    """
    if not os.path.exists(path):
        return [], []
    turns, history = [], []
    v = models.engine.model_cfg.vocab_size
    for _, where, obj in files.objects(path):
        ids = obj.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < v for i in ids):
            raise errors.UserError(
                f"{where}: a session line needs 'ids', a list of token ids in [0, {v}); this "
                "file was not written by glmvoice-chat for this LM: choose another --session"
            )
        layout = obj.get("layout")
        if layout not in (None, models.layout.name):
            raise errors.UserError(
                f"{where}: the session was recorded with token layout {layout!r} but LM "
                f"checkpoint {models.paths['lm']} has {models.layout.name!r}; choose another "
                "--session"
            )
        turns.append(obj)
        history.extend(ids)
    return turns, history
