"""The speech-tokenizer trainer's data side: manifests, the ASR text side, the audio bucket unit.

``manifests`` finds (or synthesises, for the espeak-ng corpus) the train and held-out manifests;
``text_side`` loads the run's text tokenizer from CKPT_DIR/tokenizer or makes it there;
``bucket_samples`` is the padding unit of the audio buckets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import jax
import ml_collections as mlc
import sentencepiece as spm
from etils import epath

from glmvoice_jax import audio
from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.corpora import espeak_corpus
from glmvoice_jax.data import text_tokenizer as text_tokenizer_lib
from glmvoice_jax.evals.asr_metrics import normalize_text
from glmvoice_jax.models.whisper_vq import WhisperVQConfig


def bucket_samples(config: mlc.ConfigDict, cfg: WhisperVQConfig) -> int:
    """Audio padding unit: a multiple of bucket_secs and of samples_per_token."""
    return math.lcm(int(config.input.bucket_secs * audio.SAMPLE_RATE), cfg.samples_per_token)


def manifests(config: mlc.ConfigDict, workdir: str) -> dict[str, str]:
    """{"train", "heldout"} manifest paths; synthesises the espeak corpus on first use."""
    inp = config.input
    paths = {
        "train": inp.train_manifest.replace("{workdir}", workdir),
        "heldout": inp.heldout_manifest.replace("{workdir}", workdir),
    }
    if inp.espeak_corpus_dir:
        corpus_dir = inp.espeak_corpus_dir.replace("{workdir}", workdir)
        if "://" in corpus_dir:
            raise ValueError(
                f"input.espeak_corpus_dir {corpus_dir!r} is not a local directory: the espeak-ng "
                "corpus is synthesised to local disk (a gs:// workdir needs e.g. "
                "--config.input.espeak_corpus_dir=/tmp/espeak)"
            )

        if inp.espeak_sentences not in espeak_corpus.SENTENCE_SETS:
            raise ValueError(
                f"input.espeak_sentences {inp.espeak_sentences!r} must be one of "
                f"{sorted(espeak_corpus.SENTENCE_SETS)}"
            )
        made = espeak_corpus.make_corpus(
            corpus_dir,
            max_sentences=inp.espeak_max_sentences or None,
            variants_per_sentence=inp.espeak_variants_per_sentence,
            sentences_path=espeak_corpus.SENTENCE_SETS[inp.espeak_sentences],
        )
        paths = {k: paths[k] or made[k] for k in paths}
    return paths


@dataclasses.dataclass
class AsrText:
    """The ASR targets: tokenizer, decoder prefix, end id, and the checkpoint meta entry."""

    tokenizer: text_tokenizer_lib.TextTokenizer
    prefix: tuple[int, ...]
    eos_id: int
    normalize: bool
    meta: dict

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(
            normalize_text(text) if self.normalize else text, add_prefix=False
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def describe(self) -> str:
        return (
            f"{self.tokenizer.kind} ({self.tokenizer.vocab_size} ids, prefix {list(self.prefix)}, "
            f"eos {self.eos_id})"
        )


def text_side(
    config: mlc.ConfigDict, ckpt_dir: str, transcripts: Sequence[str], model_vocab_size: int
) -> AsrText:
    """Loads the run's tokenizer from CKPT_DIR/tokenizer, or makes it (and saves it there).

    Raises:
      ValueError: when the tokenizer has more ids than ``model_vocab_size`` (the model's
        ``vocab_size``), or the Whisper tokenizer has no source directory.
    """
    tok_dir = str(epath.Path(ckpt_dir) / "tokenizer")
    meta_path = epath.Path(tok_dir) / "meta.json"
    normalize = bool(config.text.normalize)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        tok = text_tokenizer_lib.from_meta(meta, tok_dir)
    else:
        if config.text.tokenizer == "sentencepiece":
            lines = [normalize_text(t) if normalize else t for t in transcripts]
            tok = text_tokenizer_lib.SentencePieceTokenizer.train(
                lines,
                config.text.vocab_size,
                prefix_ids=(2,),  # bos_id 2 of its train()
            )
        else:
            src = config.text.whisper_dir or config.init_from
            if not src:
                raise ValueError(
                    "text.tokenizer='whisper' reads the tokenizer files of text.whisper_dir (or "
                    "init_from); set --config.init_from=/path/to/whisper-large-v3"
                )
            tok = convert_whisper.load_text_tokenizer(src)
        meta = dict(tok.save(tok_dir), dir="tokenizer")
        if jax.process_index() == 0:
            # Written last, through a temporary name: its presence means the tokenizer files are
            # complete, and a kill mid-write leaves no half file (rename is atomic locally; an
            # object store has no partial objects).
            tmp = meta_path.with_name("meta.json.tmp")
            tmp.write_text(json.dumps(meta, indent=2))
            tmp.replace(meta_path)
    if isinstance(tok, text_tokenizer_lib.SentencePieceTokenizer):
        prefix = tuple(tok.prefix_ids)
        eos = int(spm.SentencePieceProcessor(model_proto=tok.model_proto).eos_id())
    else:
        prefix = tuple(tok.specials[t] for t in tok.prefix)
        eos = tok.specials[convert_whisper.WHISPER_EOS]
    if tok.vocab_size > model_vocab_size:
        raise ValueError(
            f"the text tokenizer has {tok.vocab_size} ids but model.vocab_size is "
            f"{model_vocab_size}; set model.vocab_size (and text.vocab_size) to at least "
            f"{tok.vocab_size}"
        )
    return AsrText(tok, prefix, eos, normalize, meta)
