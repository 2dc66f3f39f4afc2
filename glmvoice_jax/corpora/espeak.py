"""Speech synthesis with espeak-ng + sox: the one place both speech makers call.

glmvoice_jax/corpora/espeak_corpus.py (the demo / tokenizer corpus) and
glmvoice_jax/evals/story_cloze.py
(the spoken StoryCloze items) speak text with the same two commands: espeak-ng writes 22.05 kHz
audio, and ``sox -R -D`` (repeatable, no dither, so the output is bit-identical on every run)
resamples it to 16 kHz mono 16-bit PCM, the tokenizer's input format.

Needs the ``espeak-ng`` and ``sox`` programs: ``apt-get install -y espeak-ng sox`` (the Makefile's
``system-deps`` target does that when they are missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess

SAMPLE_RATE = 16000
TOOLS = ("espeak-ng", "sox")
INSTALL = "apt-get update && apt-get install -y espeak-ng sox"


def check_tools(purpose: str) -> None:
    """Raises FileNotFoundError naming the missing programs, ``purpose`` and the install command."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(
            f"{purpose} needs the programs {missing}, which are not on PATH; install them with "
            f"`{INSTALL}` (or `make system-deps`)"
        )


def synthesize(
    text: str, path: str, voice: str, speed_wpm: int, pitch: int, word_gap: int = 0
) -> None:
    """Speaks ``text`` into a 16 kHz mono PCM_16 wav at ``path`` (written atomically).

    Args:
      text: what to say; passed on stdin, so a text that starts with "-" is not read as an option.
      path: the output wav; its directory is created.
      voice: an espeak-ng voice (+ variant) name, e.g. "en-us" or "en-gb-x-rp+f2".
      speed_wpm: words per minute.
      pitch: 0..99.
      word_gap: extra pause between words, in units of 10 ms (espeak-ng -g); 0 = none.

    Raises:
      subprocess.CalledProcessError: espeak-ng or sox failed (its stderr is in the exception).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    raw, part = f"{path}.{os.getpid()}.raw.wav", f"{path}.{os.getpid()}.tmp.wav"
    try:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-p", str(pitch),
             *(["-g", str(word_gap)] if word_gap else []), "-w", raw, "--stdin"],
            input=text.encode("utf-8"),
            check=True,
            capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["sox", "-R", "-D", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", part],
            check=True,
            capture_output=True,
        )
        os.replace(part, path)
    finally:
        for tmp in (raw, part):
            if os.path.exists(tmp):
                os.remove(tmp)
