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


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and runs one turn; returns its record."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "speech_tokenizer", "speech_decoder", "output"))
    if (FLAGS.input is None) == (FLAGS.text is None):
        raise flags.IllegalFlagValueError("give exactly one of --input (a wav) or --text")
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
