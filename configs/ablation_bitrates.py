r"""The tokenizer-bitrate study (glm4voice.md §3 Table 1, §9): cells 50hz ... 6p25hz.

Every cell trains its tokenizer (configs/tokenizer_*.py), evaluates it on held-out audio,
tokenizes the corpus with it, builds speech-only + ASR/TTS + text records, pretrains the same GLM
with the same steps x tokens, and evaluates that LM (per-modality loss, speech nats per second of
audio, spoken StoryCloze, ASR/TTS through the LM). glmvoice_jax/workflows/ablation.py runs it;
``report.md`` / ``report.json`` / ``report.png`` land in the sweep workdir.

Command (CPU demo, `make ablate-demo`):
    glmvoice-ablate --config configs/ablation_bitrates.py:tiny --workdir runs/ablate
Hardware: 2 CPU cores. Expected: the report table of README "Bitrate ablation" (< 60 min).

Command (pod scale; corpora from the data pipelines, tokenizers from whisper-large-v3):
    glmvoice-ablate --config configs/ablation_bitrates.py --workdir /mnt/shared/ablate \
        --config.corpus.train_manifest=/data/asr/train.jsonl \
        --config.corpus.heldout_manifest=/data/asr/heldout.jsonl \
        --config.tokenizer.overrides='("init_from=/data/whisper-large-v3",)'
Expected: Table 1's trend (ASR error rises as the frame rate drops); fill in after the first run.

Arguments (after ``:``, comma-separated): ``tiny``; ``tokenizer_steps=N``, ``lm_steps=N`` and
``decoder_steps=N`` (0 = the defaults below); ``cells=6p25hz+50hz`` runs only those cells;
``sentences=grammar_6k`` picks the bundled espeak-ng sentence set
(glmvoice_jax/corpora/espeak_corpus.py). E.g. the tiny study at the tokenizer scale where the
12.5 Hz tokenizer reaches 24% CER (configs/tokenizer_12hz.py):
    glmvoice-ablate --workdir runs/ablate_2500 \
        --config configs/ablation_bitrates.py:tiny,tokenizer_steps=2500,sentences=grammar_6k
Expected (2 CPU cores, 79 min): tokenizer CER 63.9 / 24.2 / 46.1 / 58.6% at 6.25 / 12.5 / 25 /
50 Hz. The 25 and 50 Hz tokenizers are still converging at step 2500 (README "Bitrate ablation").

Fields: ``cells`` maps a cell name to its tokenizer config spec and ``overrides`` (``key=value``
strings applied to that config after the sweep-wide ``tokenizer.overrides``; any config field can
be swept this way, e.g. ``model.codebook_size=1024`` at a fixed frame rate, or
``model.attention_block_size=50``), or to a ``checkpoint`` to import instead of training;
``decoder`` names a speech-decoder checkpoint trained on that tokenizer's tokens (refused, naming
both vocabularies and frame rates, when it was trained on another), else the sweep trains one
per cell (``decoder``); ``evals.judge`` is the one ASR judge of every cell's Recon CER/WER.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib

CELLS = (("50hz", "tokenizer_50hz"), ("25hz", "tokenizer_25hz"), ("12p5hz", "tokenizer_12hz"),
         ("6p25hz", "tokenizer_6hz"))  # fmt: skip


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(
        arg, tiny=False, tokenizer_steps=0, lm_steps=0, decoder_steps=0, cells="", sentences=""
    )
    tiny = arg.tiny
    names = [n for n in arg.cells.split("+") if n] or [n for n, _ in CELLS]
    unknown = sorted(set(names) - {n for n, _ in CELLS})
    if unknown:
        raise ValueError(f"unknown cells {unknown} in cells=; known: {[n for n, _ in CELLS]}")
    c = mlc.ConfigDict()
    c.seed = 0
    c.corpus = dict(
        # Speech manifests {"id", "audio", "text"}; empty = the espeak-ng corpus made on first use.
        train_manifest="",
        heldout_manifest="",
        espeak_dir="{sweep}/espeak",
        espeak_sentences=arg.sentences or "grammar",
        espeak_max_sentences=0,  # 0 = all
        # Text documents for the LM's text share (jsonl {"text"}); empty = bundled sentences.
        text="",
        num_text_docs=600,
    )
    c.cells = {
        name: dict(tokenizer=f"configs/{cfg}.py" + (":tiny" if tiny else ""), overrides=(),
                   checkpoint="", decoder="")
        for name, cfg in CELLS
        if name in names
    }  # fmt: skip
    # Tiny: the same 256 codes in every cell, so the cells differ by frame rate only (bitrates
    # 400 / 200 / 100 / 50 bps); a corpus of minutes cannot use 4096+ codes. Full size keeps
    # each config's codebook (600 / 300 / 175 / 100 bps, Table 1).
    c.tokenizer = dict(
        steps=arg.tokenizer_steps or (600 if tiny else 0),
        overrides=("model.codebook_size=256",) if tiny else (),
    )
    # The same GLM, steps and tokens per step in every cell ("same steps x tokens").
    c.lm = dict(
        config="configs/demo_tiny.py" if tiny else "configs/pretrain_mixture.py:variant=tiny",
        steps=arg.lm_steps or (300 if tiny else 20_000),
        overrides=(),
    )
    # The speech decoder of every cell: the same flow config and steps, trained on the cell's own
    # tokens (vocabulary, frame rate and input.max_tokens follow its tokenizer; the Griffin-Lim
    # vocoder at tiny scale, docs/decoder_training.md). A cell's ``decoder`` entry skips training.
    c.decoder = dict(
        config="configs/decoder_tiny.py",
        steps=arg.decoder_steps or (300 if tiny else 20_000),
        overrides=("evals.max_utterances=8",) if tiny else (),
    )
    # The ASR judge of Recon CER/WER, the same for every cell: "cell:NAME" (that cell's trained
    # tokenizer and ASR head; it runs first) or a tokenizer checkpoint (at pod scale: a
    # whisper-large-v3 tokenizer import).
    judge = "12p5hz" if "12p5hz" in names else names[0]
    c.evals = dict(
        judge=f"cell:{judge}",
        reconstruction_utterances=10 if tiny else 500,  # decoded, scored against the originals
        heldout_utterances=64 if tiny else 1000,  # ASR / TTS through the LM, validation loss
        story_cloze="",  # items JSONL; empty = the bundled demo set (docs/eval.md)
        story_cloze_modes="s2s,s2t",
        story_cloze_max_items=100 if tiny else 0,
        tts_temperature=0.7,
        tts_top_p=0.9,
    )
    c.debug = dict(kill_after="")  # "CELL/STAGE": SIGKILL the sweep after that stage (tests)
    return c
