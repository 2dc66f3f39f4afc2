r"""Dialogues -> stage-2 SFT records: the "streaming thoughts" chat format, two loss copies each.

Input: JSONL dialogues, one per line::

    {"id": "d1", "system": "optional system prompt", "style": {"emotion": "cheerful"},
     "turns": [{"role": "user", "speech": [codes...]},           # or "audio": REF, or "text"
               {"role": "assistant", "text": "...", "audio": REF},  # text + speech (codes / REF)
               ...]}

Turns alternate user / assistant, starting with the user and ending with the assistant. Speech is
given as codebook indices (``"speech": [int, ...]``) or as a reference (``"audio": REF``) into the
speech tokenizer's output (``--speech_tokens``: ``glmvoice-tokenize`` JSONL lines
``{"id": REF, "tokens": [...]}``; tokenize the dialogues' audio there first, with a manifest of
``{"id": REF, "audio": path}``). A user turn is its speech when it has some, else its text; an
assistant turn needs both its text and its speech.

Record (the chat template of inference/chat_template.py, which glmvoice-chat prompts with, so
training and chat agree; glm4voice.md §8)::

    [gMASK]<sop><|system|>\n{system} <|user|>\n{user 1}<|assistant|>streaming_transcription\n
    {reply 1} <|user|>\n{user 2}<|assistant|>streaming_transcription\n{reply 2} <|user|>

``{user}`` is text or <|begin_of_audio|>{speech}<|end_of_audio|>; ``{system}`` is the dialogue's
``system`` or the release's prompt for the first user turn's modality; each ``{reply}`` is the
13 : 26 interleave of the reply's text and speech (``prompts.streaming_reply`` holds the alignment
rule). The ``<|user|>`` after a reply is its end: the chat tool stops generating there.

Style tags (optional ``style``: an object with any of the keys ``speed``, ``emotion``,
``dialect`` and non-empty string values; the paper's style-controlled dialogues,
glm4voice.md §8) describe how the replies are spoken. They are data about the dialogue, not model
input: in GLM-4-Voice the style is asked for in the user's own turn ("say it slowly"), which the
record already holds, and the reply's speech carries it. The job checks them (``bad_style``) and
counts each ``key=value`` in its stats (``style.emotion=cheerful``), so the style balance of a
mixture is visible before training.

Decoupled losses (glm4voice.md §8, [P §4.2.2]): every dialogue yields two records with the same
tokens, written to two shard sets that the mixture weights separately (20 : 4 epochs):

  OUT/speech_output/  kind ``sft_speech``  loss on the replies' speech tokens (text output masked)
  OUT/text_output/    kind ``sft_text``    loss on the replies' text tokens (speech output masked)

Only assistant turns carry loss. A reply's end token (<|user|>) counts with the modality of the
token before it (speech, unless the reply's text outlasts its speech).

Skipped, counted and listed in each shard's ``errors.jsonl`` (reason; detail = ``file:line`` and
the field): bad JSON, no ``turns`` list, a turn that is not an object or has an unknown role, turns
out of order, no assistant turn (``no_assistant_turn``), a turn without its text / speech, speech
codes outside the codebook, an audio reference not in ``--speech_tokens`` (``audio_not_tokenized``:
its audio failed to tokenize), and dialogues over ``--max_tokens`` (``over_long``, e.g. a reply
longer than the context). Refused at the start: a layout without GLM-4's role tokens, or a
tokenizer whose text ids do not fit the layout.

``job.json`` records the ids of the template's fixed text (``template_ids``: the whole first prompt
of a speech-input and of a text-input turn, system prompt included). ``glmvoice-train`` compares
them with what the run's checkpoint encodes (``check_sources``) and refuses records made with
another tokenizer or layout before the first step, naming both.

Deterministic, resumable and split over processes as every job (``shard_job``); no randomness.
The two shard sets are two runs of the job over the same inputs (each lists the same errors).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from glmvoice_jax.corpora import corpus_io, shard_job
from glmvoice_jax.data import prompts, records
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.inference import chat_template

# Output subfolder and record kind of each copy; the loss covers the reply tokens of that modality.
COPIES = {"speech_output": "sft_speech", "text_output": "sft_text"}
_CONTEXT, _TEXT, _SPEECH = 0, 1, 2  # token classes of a dialogue
STYLE_KEYS = ("speed", "emotion", "dialect")  # glm4voice.md §8: style-controlled dialogues
JOB_NAME = "dialogue_records"


class DialogueError(ValueError):
    """A dialogue that is skipped: ``reason`` is the errors.jsonl key, the message the detail."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Turn:
    """One parsed turn: text and / or speech codes."""

    role: str
    text: str | None
    speech: np.ndarray | None


def _speech(turn: Mapping, field: str, speech_tokens: Mapping, num_audio: int):
    if "speech" in turn:
        codes = turn["speech"]
        if not isinstance(codes, list) or not codes or not all(isinstance(c, int) for c in codes):
            raise DialogueError("bad_speech", f"{field}.speech must be a non-empty list of ints")
        where = f"{field}.speech"
    elif "audio" in turn:
        ref = turn["audio"]
        if not isinstance(ref, str) or ref not in speech_tokens:
            raise DialogueError(
                "audio_not_tokenized",
                f"{field}.audio {ref!r} is not in --speech_tokens (tokenize it with "
                "glmvoice-tokenize; an audio file that failed to tokenize is listed there)",
            )
        codes, where = speech_tokens[ref], f"{field}.audio {ref!r}"
    else:
        return None
    codes = np.asarray(codes, np.int64)
    if codes.min() < 0 or codes.max() >= num_audio:
        bad = int(codes[(codes < 0) | (codes >= num_audio)][0])
        raise DialogueError(
            "bad_speech", f"{where}: code {bad} outside the codebook [0, {num_audio})"
        )
    return codes


def parse_dialogue(fields: Mapping, speech_tokens: Mapping, num_audio: int) -> list[Turn]:
    """The turns of one JSONL dialogue, checked.

    Raises:
      DialogueError: naming the field (e.g. ``turns[3].text``) and the rule it breaks.
    """
    turns = fields.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DialogueError("bad_turns", "'turns' must be a non-empty list of turn objects")
    system = fields.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise DialogueError("bad_system", "'system' must be a non-empty string when given")
    style_tags(fields)
    out: list[Turn] = []
    for i, turn in enumerate(turns):
        field = f"turns[{i}]"
        if not isinstance(turn, dict):
            raise DialogueError("bad_turns", f"{field} is not an object")
        role = turn.get("role")
        if role not in ("user", "assistant"):
            raise DialogueError("bad_role", f"{field}.role {role!r} must be 'user' or 'assistant'")
        text = turn.get("text")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise DialogueError("bad_text", f"{field}.text must be a non-empty string when given")
        speech = _speech(turn, field, speech_tokens, num_audio)
        if role == "user" and text is None and speech is None:
            raise DialogueError("empty_turn", f"{field}: a user turn needs speech, audio or text")
        if role == "assistant" and (text is None or speech is None):
            missing = "text" if text is None else "speech (or audio)"
            raise DialogueError("empty_turn", f"{field}: an assistant turn needs {missing}")
        out.append(Turn(role, text, speech))
    if not any(t.role == "assistant" for t in out):
        raise DialogueError("no_assistant_turn", "the dialogue has no assistant turn")
    for i, turn in enumerate(out):
        want = "user" if i % 2 == 0 else "assistant"
        if turn.role != want:
            raise DialogueError(
                "bad_turn_order", f"turns[{i}].role is {turn.role!r}, expected {want!r}"
            )
    if out[-1].role != "assistant":
        raise DialogueError(
            "bad_turn_order", f"turns[{len(out) - 1}]: the last turn must be the assistant's"
        )
    return out


def style_tags(fields: Mapping) -> list[str]:
    """The dialogue's style tags as sorted ``key=value`` strings (module docstring).

    Raises:
      DialogueError: ``style`` is not an object of known keys with non-empty string values.
    """
    style = fields.get("style")
    if style is None:
        return []
    if not isinstance(style, dict) or not style:
        raise DialogueError("bad_style", f"'style' must be an object with keys from {STYLE_KEYS}")
    out = []
    for key, value in sorted(style.items()):
        if key not in STYLE_KEYS:
            raise DialogueError("bad_style", f"style.{key}: unknown key; use one of {STYLE_KEYS}")
        if not isinstance(value, str) or not value.strip():
            raise DialogueError("bad_style", f"style.{key} must be a non-empty string")
        out.append(f"{key}={value.strip()}")
    return out


def template_ids(template: chat_template.ChatTemplate) -> dict[str, list[int]]:
    """The first prompt of a speech-input and of a text-input turn (one code / "?" as the user).

    Everything in them but the user is the template's fixed text, encoded by the tokenizer: two
    tokenizers or layouts that disagree on any system prompt or header id disagree here.
    """
    speech = chat_template.UserTurn(speech=np.zeros(1, np.int64))
    text = chat_template.UserTurn(text="?")
    return {
        "speech_input": [int(i) for i in template.chat_prompt([], speech, None)],
        "text_input": [int(i) for i in template.chat_prompt([], text, None)],
    }


def check_sources(
    shard_dirs: Sequence[str], template: chat_template.ChatTemplate, expects: str
) -> int:
    """Refuses dialogue records whose template ids differ from ``template``'s.

    Returns how many folders of dialogue records were checked (other jobs' folders are passed).

    Args:
      shard_dirs: the folders that hold a run's shards (``job.json`` beside them).
      template: the chat template of the run (its layout + the checkpoint's text encoder).
      expects: names the encoder in the message (e.g. "checkpoint CKPT's tokenizer").

    Raises:
      ValueError: one line naming the job file, the prompt, the first differing position and both
        ids, and what to do.
    """
    want = template_ids(template)
    checked = 0
    for d in shard_dirs:
        path = epath.Path(d) / shard_job.JOB_FILE
        if not path.exists():
            continue
        job = json.loads(path.read_text())
        if job.get("job") != JOB_NAME:
            continue
        got = job.get("template_ids")
        if not isinstance(got, dict):
            raise ValueError(
                f"{path}: dialogue records without template ids (written by an older job); "
                "rebuild them with data_pipelines.dialogue_records"
            )
        for key, ids in want.items():
            have = got.get(key)
            if have == ids:
                continue
            have = have if isinstance(have, list) else []
            pos = next(
                (i for i, (a, b) in enumerate(zip(have, ids, strict=False)) if a != b),
                min(len(have), len(ids)),
            )
            a, b = (x[pos] if pos < len(x) else None for x in (have, ids))
            raise ValueError(
                f"{path}: the records' {key.replace('_', '-')} chat prompt (tokenizer "
                f"{job.get('tokenizer')!r}, layout {job.get('layout')!r}) differs from {expects} "
                f"(layout {template.layout.name!r}) at position {pos}: id "
                f"{a} vs {b}; rebuild the records with the checkpoint's tokenizer and layout"
            )
        checked += 1
    return checked


def shard_dirs(shard_paths: Sequence[str]) -> list[str]:
    """The distinct folders of a list of shard paths, sorted."""
    return sorted({os.path.dirname(p) for p in shard_paths})


def dialogue_tokens(
    turns: list[Turn],
    system: str | None,
    template: chat_template.ChatTemplate,
    encode,
    *,
    blocks: tuple[int, int] = prompts.STREAM_BLOCKS,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(tokens [L], token class [L]: 0 context / 1 reply text / 2 reply speech, text outlasts).

    The prompt of every turn is ``template.chat_prompt`` (exactly what glmvoice-chat feeds).
    """
    lay = template.layout
    end = lay.special(chat_template.CHAT_STOPS[0])  # <|user|>
    tokens: list[int] = []
    classes: list[int] = []
    outlasts = False
    for k in range(0, len(turns), 2):
        u, a = turns[k], turns[k + 1]
        user = chat_template.UserTurn(
            speech=u.speech,
            text=None if u.speech is not None else u.text,
        )
        prompt = template.chat_prompt(tokens, user, system)
        new = prompt[len(tokens) :]
        if tokens:  # the <|user|> opening this turn ends the previous reply
            classes.append(classes[-1])
            new_classes = [_CONTEXT] * (len(new) - 1)
        else:
            new_classes = [_CONTEXT] * len(new)
        tokens = prompt
        classes += new_classes
        ids, is_speech = prompts.streaming_reply(
            encode(a.text), a.speech, lay, blocks=blocks, what=f"reply of turn {k + 1}"
        )
        outlasts |= not bool(is_speech[-1])
        tokens += ids.tolist()
        classes += np.where(is_speech, _SPEECH, _TEXT).tolist()
    tokens.append(end)
    classes.append(classes[-1])
    return np.asarray(tokens, np.int32), np.asarray(classes, np.int8), outlasts


def sft_examples(
    tokens: np.ndarray, classes: np.ndarray, *, source: str
) -> dict[str, records.Example]:
    """The two decoupled copies of one dialogue, keyed by ``COPIES`` subfolder."""
    return {
        "speech_output": records.Example(
            tokens, (classes == _SPEECH).astype(np.uint8), f"{source}_speech_output", "sft_speech"
        ),
        "text_output": records.Example(
            tokens, (classes == _TEXT).astype(np.uint8), f"{source}_text_output", "sft_text"
        ),
    }


def load_speech_tokens(spec: str | None) -> dict[str, list[int]]:
    """REF -> codes from glmvoice-tokenize output (globs).

    Bad lines are skipped: their audio counts as not tokenized.
    """
    if not spec:
        return {}
    out: dict[str, list[int]] = {}
    corpus = corpus_io.LineCorpus(spec)
    for item in corpus.iter_range(range(len(corpus))):
        if item.error or "id" not in item.fields:
            continue
        codes = item.fields.get("tokens")
        if isinstance(codes, list) and codes and all(isinstance(c, int) for c in codes):
            out[str(item.fields["id"])] = codes
    return out


def write_dialogue_records(
    dialogues: str,
    out_dir: str,
    *,
    tokenizer: str,
    layout: str,
    speech_tokens: str | None = None,
    source: str = "sft",
    num_shards: int = 16,
    max_tokens: int = 8192,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
    runner: shard_job.Runner | None = None,
) -> dict[str, tuple[shard_job.JobPlan, dict]]:
    """Runs the job; returns {copy subfolder: (plan, totals)}. See the module docstring.

    ``runner``: who writes the shards (``shard_job.run``); e.g. ``beam_runner.BeamRunner``.

    Raises:
      ValueError: a layout without role or speech tokens, or a tokenizer that does not fit it.
    """
    lay = token_layout_lib.get(layout)
    if lay.num_audio_tokens == 0:
        raise ValueError(f"token layout {layout!r} has no speech tokens")
    tok = corpus_io.load_tokenizer(tokenizer, lay)

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_prefix=False)

    template = chat_template.ChatTemplate.for_layout(lay, encode, kind="chat")
    for modality, text in chat_template.SYSTEM_PROMPTS.items():  # refused at start, not per line
        ids = np.asarray(encode(text))
        if ids.size == 0 or ids.min() < 0 or ids.max() >= lay.text_vocab_size:
            raise ValueError(
                f"the {modality}-input system prompt encodes to ids outside the text range [0, "
                f"{lay.text_vocab_size}) of layout {layout!r}; use the tokenizer of the layout"
            )
    refs = load_speech_tokens(speech_tokens)
    corpus = corpus_io.LineCorpus(dialogues)
    if process_index is None or process_count is None:
        process_index, process_count = shard_job.default_process()

    def produce_copy(copy: str):
        def produce(shard: int, r: range, log: shard_job.ShardLog) -> Iterator:
            del shard
            for item in corpus.iter_range(r):
                where = corpus.where(item.index)
                if item.error:
                    log.error(item.index, item.id, item.error[0], item.error[1])
                    continue
                try:
                    turns = parse_dialogue(item.fields, refs, lay.num_audio_tokens)
                    styles = style_tags(item.fields)
                    tokens, classes, outlasts = dialogue_tokens(
                        turns, item.fields.get("system"), template, encode
                    )
                except DialogueError as e:
                    log.error(item.index, item.id, e.reason, f"{where}: {e}")
                    continue
                except ValueError as e:  # ids outside the layout (prompts / template checks)
                    log.error(item.index, item.id, "bad_tokens", f"{where}: {e}")
                    continue
                log.add("assistant_turns", len(turns) // 2)
                log.add("text_outlasts_speech", int(outlasts))
                for tag in styles:
                    log.add(f"style.{tag}", 1)
                yield item.index, item.id, sft_examples(tokens, classes, source=source)[copy]

        return produce

    params = dict(
        job=JOB_NAME,
        dialogues=dialogues,
        speech_tokens=speech_tokens,
        tokenizer=tokenizer,
        layout=layout,
        max_tokens=max_tokens,
        blocks=list(prompts.STREAM_BLOCKS),
        record_version=records.VERSION,
        template_ids=template_ids(template),
    )
    results = {}
    for copy in COPIES:
        plan = shard_job.JobPlan(
            f"{out_dir}/{copy}",
            f"{source}_{copy}",
            len(corpus),
            num_shards,
            process_index,
            process_count,
        )
        totals = shard_job.run(
            plan,
            produce_copy(copy),
            params=params,
            layout=lay,
            max_tokens=max_tokens,
            progress=progress,
            runner=runner,
        )
        results[copy] = (plan, totals)
    return results
