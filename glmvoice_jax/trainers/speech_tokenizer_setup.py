"""Setup pieces of the speech-tokenizer trainer (config, text side, state layout, init, logs).

Config section and validation, the ASR text side, the train-state layout (one pure dict + a Param
mask), weight import (whisper-large-v3 -> Whisper-VQ), the codebook init, and logging.

Kept apart from ``trainers/speech_tokenizer.py`` so that ``train()`` reads top to bottom on its
own; nothing here is used by another trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import sentencepiece as spm
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from glmvoice_jax import audio, checkpoint, config_lib
from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.corpora import espeak_corpus
from glmvoice_jax.data import text_tokenizer as text_tokenizer_lib
from glmvoice_jax.evals.asr_metrics import normalize_text
from glmvoice_jax.models.whisper_vq import WhisperVQ, WhisperVQConfig

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(WhisperVQConfig))
_QUANTIZER = "['encoder']['quantizer']"


# ---------------------------------------------------------------------------------------------
# Config.


def check_batch_sizes(config: mlc.ConfigDict, dp: int) -> None:
    for name, size in (
        ("input.global_batch_size", config.input.global_batch_size),
        ("evals.batch_size", config.evals.batch_size),
    ):
        if size % dp or size % jax.process_count():
            raise ValueError(
                f"{name} ({size}) must be divisible by the data-parallel shards ({dp} = mesh "
                f"data x fsdp) and the process count ({jax.process_count()}); use a multiple "
                f"of {math.lcm(dp, jax.process_count())}"
            )


def banner(config: mlc.ConfigDict, cfg: WhisperVQConfig) -> str:
    pool = (
        f"avg-pool x{cfg.pooling_kernel} after layer {cfg.pooling_position}"
        if cfg.uses_pooling
        else "no pooling"
    )
    return (
        f"speech tokenizer {config.model.variant}: d={cfg.embed_dim}, {cfg.num_layers} encoder / "
        f"{cfg.num_decoder_layers} decoder layers, {pool}, VQ after layer "
        f"{cfg.quantize_position} ({cfg.codebook_size} codes, block {cfg.attention_block_size})\n"
        f"bitrate: {cfg.token_rate_hz:g} Hz x {math.log2(cfg.codebook_size):g} bits = "
        f"{cfg.bitrate_bps:g} bps"
    )


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


# ---------------------------------------------------------------------------------------------
# Text side.


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


def text_side(config: mlc.ConfigDict, ckpt_dir: str, transcripts: Sequence[str]) -> AsrText:
    """Loads the run's tokenizer from CKPT_DIR/tokenizer, or makes it (and saves it there)."""
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
    vocab = config_lib.tokenizer_model_config(config).vocab_size
    if tok.vocab_size > vocab:
        raise ValueError(
            f"the text tokenizer has {tok.vocab_size} ids but model.vocab_size is {vocab}; set "
            f"model.vocab_size (and text.vocab_size) to at least {tok.vocab_size}"
        )
    return AsrText(tok, prefix, eos, normalize, meta)


# ---------------------------------------------------------------------------------------------
# Train-state layout: the whole model state as one pure dict; a mask marks the Params.


def param_mask(make_model: Callable[[], WhisperVQ], abs_params: Any) -> Any:
    """Bool tree like ``abs_params``: True on nnx.Param leaves (what the optimizer trains)."""
    trainable = nnx.to_pure_dict(nnx.state(nnx.eval_shape(make_model), nnx.Param))
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(trainable)}
    return jax.tree_util.tree_map_with_path(
        lambda p, _: jax.tree_util.keystr(p) in paths, abs_params
    )


def subset(tree: Mapping, mask: Mapping, *, keep: bool) -> dict:
    """The leaves of a nested dict whose mask equals ``keep`` (empty branches dropped)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            sub = subset(v, mask[k], keep=keep)
            if sub:
                out[k] = sub
        elif bool(mask[k]) == keep:
            out[k] = v
    return out


def merge(base: Mapping, update: Mapping) -> dict:
    """Nested-dict union; ``update`` wins on shared leaves."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(base[k], v) if isinstance(v, Mapping) and k in base else v
    return out


def train_shardings(abs_train, abs_params, param_sh, replicated):
    """Opt-state leaves shaped like a param (AdamW mu/nu) take its sharding; others replicate."""
    flat_s = jax.tree.leaves(param_sh, is_leaf=lambda x: isinstance(x, NamedSharding))
    param_paths = {
        jax.tree_util.keystr(p): (s, x.shape)
        for (p, x), s in zip(jax.tree_util.tree_leaves_with_path(abs_params), flat_s)
    }

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for ppath, (s, shape) in param_paths.items():
            if key.endswith(ppath) and leaf.shape == shape:
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abs_train)


# ---------------------------------------------------------------------------------------------
# Initialisation: weights from another checkpoint, data-dependent codebook.


def _load_source(path: str) -> tuple[WhisperVQConfig, dict]:
    if convert_whisper.is_hf_checkpoint(path):  # HF: stock Whisper or the release
        cfg, model = convert_whisper.load_checkpoint(path)
        return cfg, nnx.to_pure_dict(nnx.state(model))
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(path))
    if not isinstance(cfg, WhisperVQConfig):
        raise ValueError(f"init_from {path} holds a {type(cfg).__name__}, not a WhisperVQConfig")
    abs_model = nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nnx.to_pure_dict(nnx.state(abs_model)),
    )
    return cfg, checkpoint.restore_params(path, target)


def init_from(path: str, cfg: WhisperVQConfig, params: Any, param_sh: Any) -> tuple[Any, bool]:
    """Copies matching weights from a HF Whisper directory or an Orbax checkpoint.

    Every variable of this model comes from the source (same path and shape), except:
    ``embed_positions2`` (copied from the first rows of the source's ``embed_positions`` when the
    source has none, §12 #4), the quantizer (kept fresh when the source has none) and the decoder
    (kept fresh, with a warning, when the source has none: the released tokenizer).

    Returns:
      (params placed with ``param_sh``, whether the codebook is still fresh).

    Raises:
      ValueError: listing variables the source lacks or holds with another shape.
    """
    _, src = _load_source(path)
    flat_src = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(src)}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, missing, wrong, fresh_decoder = [], [], [], False
    for p, leaf in leaves:
        key = jax.tree_util.keystr(p)
        value = flat_src.get(key)
        if value is None and key == "['encoder']['embed_positions2']":
            value = flat_src.get("['encoder']['embed_positions']")
            value = None if value is None else np.asarray(value)[: leaf.shape[0]]
        if value is None:
            if key.startswith(_QUANTIZER):
                out.append(leaf)
                continue
            if key.startswith("['decoder']"):
                fresh_decoder = True
                out.append(leaf)
                continue
            missing.append(key)
        elif tuple(value.shape) != tuple(leaf.shape):
            wrong.append(f"{key}: {tuple(value.shape)} vs {tuple(leaf.shape)}")
        else:
            out.append(np.asarray(value).astype(leaf.dtype))
    if missing or wrong:
        raise ValueError(
            f"init_from {path} does not fit the configured model: missing {missing}; shapes "
            f"(checkpoint vs model) {wrong}. Match the model dims (model.*) to the checkpoint"
        )
    if fresh_decoder:
        print(f"warning: {path} has no decoder weights; the Whisper decoder starts from random")
    fresh_codebook = f"{_QUANTIZER}['codebook']" not in flat_src
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, out), param_sh), fresh_codebook


def codebook_frames(config, graphdef, params, data_iter, to_global, features) -> Any:
    """[C, D] codebook init: a .npy file, or frames at the quantizer sampled from training batches.

    "data": pre-quantizer frames of the first ``vq.init_batches`` batches, sampled without
    replacement (glm4voice.md §12 #3). With fewer valid frames than codes, the rest are drawn
    again with a little noise (and a warning).
    """
    cfg_model = config_lib.tokenizer_model_config(config)
    if config.vq.codebook_init.endswith(".npy"):
        return np.load(config.vq.codebook_init)

    def pre_quant(p, batch):
        model = nnx.merge(graphdef, p)
        mel, mel_mask = features(batch, cfg_model)
        out = model.encoder(mel, mel_mask, stop_before_quantizer=True)
        return out.hidden, out.mask

    fn = jax.jit(pre_quant)
    frames = []
    for _ in range(config.vq.init_batches):
        out = fn(params, to_global(next(data_iter)))
        hidden, mask = (multihost_utils.process_allgather(x, tiled=True) for x in out)
        frames.append(np.asarray(hidden, np.float32)[np.asarray(mask)])
    frames = np.concatenate(frames)  # (N, D)
    k = cfg_model.codebook_size
    rng = np.random.default_rng(config.seed)
    if len(frames) >= k:
        return frames[rng.choice(len(frames), k, replace=False)]
    print(
        f"warning: {len(frames)} frames for {k} codes; the rest are noisy repeats (raise "
        "vq.init_batches)"
    )
    extra = frames[rng.choice(len(frames), k - len(frames))]
    extra = extra + rng.normal(0, 0.01 * frames.std(), extra.shape).astype(np.float32)
    return np.concatenate([frames, extra])


def set_codebook(params: dict, frames: Any, param_sh: dict) -> dict:
    """Codebook = frames, EMA weight = frames, EMA count = 1 (a copy of params with these set)."""
    q = dict(params["encoder"]["quantizer"])
    sh = param_sh["encoder"]["quantizer"]
    expected = tuple(q["codebook"].shape)
    if tuple(frames.shape) != expected:
        raise ValueError(f"codebook init has shape {frames.shape}; the quantizer needs {expected}")
    q["codebook"] = jax.device_put(jnp.asarray(frames, q["codebook"].dtype), sh["codebook"])
    q["ema_weight"] = jax.device_put(jnp.asarray(frames, jnp.float32), sh["ema_weight"])
    q["ema_count"] = jax.device_put(jnp.ones(q["ema_count"].shape, jnp.float32), sh["ema_count"])
    return merge(params, {"encoder": {"quantizer": q}})


# ---------------------------------------------------------------------------------------------
# Logging.


def summarize(
    fetched: Sequence[Mapping[str, Any]], step_time: float, peak_flops: float = 0.0
) -> dict[str, float]:
    """Scalars of one logging interval from the per-step metric dicts.

    ``peak_flops`` is the whole mesh's peak FLOP/s; with it, ``mfu`` = the step's FLOPs
    (``WhisperVQConfig.train_flops``) over device step time and peak, as the LM reports it.
    """

    def mean(key):
        return float(np.mean([f[key] for f in fetched]))

    out = {
        k: mean(k)
        for k in (
            "loss",
            "asr_loss",
            "commit_loss",
            "grad_norm",
            "codebook_perplexity",
            "num_active_codes",
        )  # fmt: skip
    }
    out["lr"] = float(fetched[-1]["lr"])
    out["codebook_usage"] = float(fetched[-1]["codebook_usage"])
    out["codes_restarted"] = float(sum(int(f["codes_restarted"]) for f in fetched))
    out["step_time"] = step_time
    out["audio_secs_per_sec"] = mean("audio_secs") / step_time
    out["tokens_per_sec"] = mean("speech_tokens") / step_time
    if peak_flops > 0 and "flops" in fetched[0]:
        out["mfu"] = mean("flops") / step_time / peak_flops
    return out


def console_line(s: Mapping[str, float]) -> str:
    """The progress bar's metrics (and the line printed after each held-out eval)."""
    line = (
        f"loss {s['loss']:.3f}  asr {s['asr_loss']:.3f}  commit "
        f"{s['commit_loss']:.3f}  usage {100 * s['codebook_usage']:.0f}%  ppl "
        f"{s['codebook_perplexity']:.1f}  restarts {s['codes_restarted']:.0f}  "
        f"{s['audio_secs_per_sec']:.1f} audio-s/s  "
        + (f"mfu {100 * s['mfu']:.1f}%  " if "mfu" in s else "")
        + f"{s['step_time']:.2f} s/step  {s['minutes']:.1f} min  cpu {s['cpu_minutes']:.1f} min"
    )
    if "eval_cer" in s:
        line += f"  | held-out CER {100 * s['eval_cer']:.1f}%  WER {100 * s['eval_wer']:.1f}%"
    return line
