r"""glmvoice-chat: ask a GLM-4-Voice-style model a spoken (or written) question, hear the answer.

Usage:
    glmvoice-chat --checkpoint LM --speech_tokenizer TOK --speech_decoder DEC \
        --input question.wav --output DIR
    glmvoice-chat ... --text "What is the capital of France?" --output DIR   # next turn

Checkpoints: LM a GLM checkpoint with a token layout (glmvoice-import of GLM-4-Voice-9B, or a
glmvoice-train workdir); TOK the speech tokenizer (the released directory or an Orbax
checkpoint); DEC the speech decoder (the released directory or its glmvoice-import). Their speech
vocabularies must agree (refused otherwise, naming both).

Each call is one turn: DIR/turn-NNN.wav (the spoken reply, 22.05 kHz, written chunk by chunk as
the speech tokens arrive: first 10 tokens, then growing blocks), DIR/turn-NNN.txt (the reply's
text), DIR/turn-NNN.json (the turn with its timings: time to the first text token, to the first
audio sample, tokens/s) and DIR/session.jsonl (or --session): the conversation so far, which the
next call continues (a layout with chat roles: the GLM-4-Voice template; a base model: each turn
alone, see glmvoice_jax/inference/chat_template.py). Sampling defaults are the release demo's
(temperature 0.2, top-p 0.8). The first turn of a process includes compilation.

On a TPU host (v5e-8 / v6e-8) the 9B model is sharded over the chips: --dtype bfloat16 (19 GB of
weights) or --quantize int8 (9.5 GB).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

from absl import flags, logging

from glmvoice_jax import errors
from glmvoice_jax.cli import doors

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "GLM checkpoint (with a token layout).", flag_values=FLAGS)
flags.DEFINE_string(
    "speech_tokenizer", None, "Speech-tokenizer checkpoint or release dir.", flag_values=FLAGS
)
flags.DEFINE_string(
    "speech_decoder", None, "Speech-decoder checkpoint or release dir.", flag_values=FLAGS
)
flags.DEFINE_string("input", None, "The spoken question (wav, flac, ...).", flag_values=FLAGS)
flags.DEFINE_string("text", None, "A written question instead of --input.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Directory for the turn's files (created).", flag_values=FLAGS)
flags.DEFINE_string(
    "session", None, "Session JSONL to continue (default: OUTPUT/session.jsonl).", flag_values=FLAGS
)
flags.DEFINE_string(
    "system", None, "System prompt of a new chat session (default: the release's).",
    flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_enum(
    "template", "auto", ["auto", "chat", "base"], "Conversation template.", flag_values=FLAGS
)
flags.DEFINE_float("temperature", 0.2, "Sampling temperature (0 = greedy).", flag_values=FLAGS)
flags.DEFINE_float("top_p", 0.8, "Nucleus mass (1 = off).", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 0, "Keep the k best ids (0 = off).", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 2000, "Reply length limit in tokens.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Sampling seed (the turn number is added).", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "LM dtype.", flag_values=FLAGS)
flags.DEFINE_enum(
    "quantize", "none", ["none", "int8"], "LM weight quantisation.", flag_values=FLAGS
)
flags.DEFINE_string("axis_rules", "fsdp", "Sharding preset (sharding.py).", flag_values=FLAGS)
flags.DEFINE_integer("max_context", 8192, "Conversation length limit in tokens.", flag_values=FLAGS)
flags.DEFINE_enum(
    "noise", "zeros", ["zeros", "random"], "Decoder noise: zeros = deterministic.",
    flag_values=FLAGS,
)  # fmt: skip


# Longest --max_context (GLM-4's longest, 128K tokens). The engine allocates the KV cache for the
# whole context at start: 2 x layers x KV heads x head dim x context values (GLM-4-Voice-9B in
# bfloat16: 40 KiB per token, 5 GiB at 128K); a larger value is refused before anything loads.
MAX_CONTEXT = 131072


def _check_context(ckpt: str, context: int, dtype: str) -> None:
    if 1 <= context <= MAX_CONTEXT:
        return
    size = ""
    try:
        from glmvoice_jax import checkpoint

        cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt))
        per_token = (
            2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * (4 - 2 * (dtype != "float32"))
        )
        size = f" (its KV cache alone would take {per_token * max(context, 0) / 2**30:.1f} GiB)"
    except Exception:  # noqa: BLE001 - the size is only a hint; the checkpoint is checked later
        pass
    raise flags.IllegalFlagValueError(
        f"--max_context {context} must lie in [1, {MAX_CONTEXT}]{size}; the default 8192 holds "
        "several minutes of conversation"
    )


def _check_duration(path: str, samples_per_token: int, room: int) -> None:
    """Refuses from the header, before decoding, audio longer than the context leaves room for."""
    import soundfile

    from glmvoice_jax import audio

    try:
        info = soundfile.info(path)
    except Exception:  # noqa: BLE001 - not a soundfile format: read_speech decodes and checks
        return
    if info.samplerate <= 0:
        return
    seconds = info.frames / info.samplerate
    n_tokens = -(-int(seconds * audio.SAMPLE_RATE) // samples_per_token)
    if n_tokens > room:
        rate = audio.SAMPLE_RATE / samples_per_token
        raise errors.UserError(
            f"audio file {path!r} lasts {seconds:.1f} s = {n_tokens} speech tokens at {rate:g} "
            f"Hz, but the context leaves room for {max(room, 0)} tokens ({max(room, 0) / rate:.1f} "
            "s); trim the file, lower --max_new_tokens or start a new session"
        )


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and runs one turn; returns its record."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "speech_tokenizer", "speech_decoder", "output"))
    if (FLAGS.input is None) == (FLAGS.text is None):
        raise flags.IllegalFlagValueError("give exactly one of --input (a wav) or --text")
    _check_context(FLAGS.checkpoint, FLAGS.max_context, FLAGS.dtype)
    # Orbax warns on every read-only restore (three checkpoints): noise in a conversation.
    logging.set_verbosity(logging.ERROR)
    start = time.perf_counter()
    import jax

    from glmvoice_jax import files
    from glmvoice_jax.inference import chat, engine
    from glmvoice_jax.inference.chat_template import UserTurn

    config = engine.EngineConfig(
        dtype=FLAGS.dtype,
        quantize=FLAGS.quantize,
        axis_rules=FLAGS.axis_rules,
        max_context=FLAGS.max_context,
        batch_size=1,
        steps_per_call=1,
    )
    models = chat.load(
        FLAGS.checkpoint,
        FLAGS.speech_tokenizer,
        FLAGS.speech_decoder,
        config,
        template=FLAGS.template,
    )
    load_secs = time.perf_counter() - start
    session = FLAGS.session or os.path.join(FLAGS.output, "session.jsonl")
    turns, history = chat.read_session(session, models)
    number = len(turns) + 1
    sampling = engine.SamplingParams(
        temperature=FLAGS.temperature,
        top_p=FLAGS.top_p,
        top_k=FLAGS.top_k,
        max_new_tokens=FLAGS.max_new_tokens,
    )
    turn_start = time.perf_counter()
    if FLAGS.input is not None:
        room = chat.speech_room(models, history, FLAGS.max_new_tokens, FLAGS.system)
        _check_duration(FLAGS.input, models.tokenizer.config.samples_per_token, room)
        user = UserTurn(speech=chat.read_speech(FLAGS.input, models, room))
        record = {"audio": os.path.abspath(FLAGS.input)}
    else:
        user, record = UserTurn(text=FLAGS.text), {"text": FLAGS.text}
    tokenize_secs = time.perf_counter() - turn_start
    stem = os.path.join(FLAGS.output, f"turn-{number:03d}")
    print(f"turn {number}: ", end="", flush=True)
    turn = chat.respond(
        models,
        user,
        history if models.template.kind == "chat" else [],
        sampling=sampling,
        seed=FLAGS.seed + number,
        wav_path=stem + ".wav",
        number=number,
        user_record=record,
        system=FLAGS.system,
        start=turn_start,
        noise_key=jax.random.key(FLAGS.seed) if FLAGS.noise == "random" else None,
        on_text=lambda text: print(text, end="", flush=True),
    )
    print()
    turn.timings.update(
        tokenize_secs=tokenize_secs,
        load_secs=load_secs,
        compiled_in_turn=True,  # one turn per process: compilation is inside the turn
        template=models.template.kind,
        load_average=list(os.getloadavg()),
    )
    out = turn.to_json()
    files.write_text(stem + ".txt", turn.reply_text + "\n")
    files.write_json(stem + ".json", out)
    files.write_jsonl(session, turns + [out])
    t = turn.timings
    summary = {k: t[k] for k in ("first_text_token_secs", "first_audio_secs", "tokens_per_sec")}
    print(
        f"{stem}.wav: {t['audio_secs']:.2f} s of audio, {t['text_tokens']} text + "
        f"{t['speech_tokens']} speech tokens{' (truncated)' if turn.truncated else ''}; "
        f"timings {json.dumps(summary)}",
        file=sys.stderr,
    )
    return out


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
