"""Per-token log-probabilities of token sequences under a GLM checkpoint (``glmvoice-score``).

Contract (house_style.md §12): for a sequence ``ids``, ``token_logprobs[i - 1] = log p(ids[i] |
ids[:i])`` for i >= 1, computed in float32 (float32 activations and matmuls at "highest"
precision, i.e. no TF32 on GPUs; float32 logits and log-softmax); ``logprob`` is their sum,
accumulated in float64.

Sequences are sorted by length and batched per length bucket (the next power of two >= 16):
each row holds one sequence, padded at the end with segment id 0, so padding changes nothing
(attention is causal and segment-masked). Rows are sharded over every device (the "fsdp" preset:
batch over data x fsdp, parameters FSDP-sharded). The vocab projection and log-softmax run over
blocks of positions so [B, T, V] logits are never materialised at once.

Axes: B batch, T length, D embed, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax import checkpoint, files, sharding
from glmvoice_jax import progress as progress_lib
from glmvoice_jax.data import text_tokenizer
from glmvoice_jax.models import glm

MIN_BUCKET = 16
LOGITS_BLOCK = 256  # positions per vocab-projection block
# Longest sequence scored (GLM-4's longest context, 128K tokens). Past it the activations of one
# row alone take GBs; longer input is refused naming its line before the checkpoint is loaded.
MAX_TOKENS = 131072
# attention_impl "xla" materialises one row's scores: heads x T^2 float32 (T = the bucket). Above
# this a sequence is refused with the hint to pass --attention_impl=chunked (O(T) memory): 32 heads
# at T = 16384 would take 32 GiB.
XLA_ATTENTION_BYTES = 8 << 30


@dataclasses.dataclass(frozen=True)
class Record:
    id: object
    ids: np.ndarray  # int32 [T]


def bucket_length(n: int) -> int:
    return max(MIN_BUCKET, 1 << max(0, n - 1).bit_length())


def max_tokens(cfg: glm.GLMConfig) -> tuple[int, str]:
    """(longest sequence ``cfg`` scores, why): MAX_TOKENS, or the xla attention bound."""
    if cfg.attention_impl == "xla":
        t = 1 << 30
        while t > MIN_BUCKET and cfg.num_heads * t * t * 4 > XLA_ATTENTION_BYTES:
            t //= 2
        if t < MAX_TOKENS:
            return t, (
                f"with attention_impl 'xla' ({cfg.num_heads} heads x T^2 float32 scores past "
                f"{XLA_ATTENTION_BYTES >> 30} GiB); pass --attention_impl=chunked (up to "
                f"{MAX_TOKENS} tokens) or split the sequence"
            )
    return MAX_TOKENS, "(memory); split the sequence"


def read_inputs(
    path: str,
    vocab_size: int,
    tokenizer: Callable[[], text_tokenizer.TextTokenizer | None] | None = None,
    *,
    limit: tuple[int, str] | None = None,
) -> list[Record]:
    """Parses IN.jsonl: lines ``{"id"?, "ids": [int, ...]}`` or ``{"id"?, "text": str}``.

    A missing id becomes the 1-based line number. Blank lines are skipped. ``tokenizer`` returns
    the tokenizer for "text" lines; it is called at the first such line only. ``limit``: (the
    most tokens a sequence may have, what to do about it), e.g. ``max_tokens(cfg)``.

    Raises:
      ValueError: naming ``path:line`` and what is wrong (JSON, fields, ids outside the vocab).
    """
    out = []
    tok = None
    for n, where, obj in files.objects(path):
        if ("ids" in obj) == ("text" in obj):
            raise ValueError(f'{where}: expected an object with exactly one of "ids", "text"')
        if "text" in obj:
            if not isinstance(obj["text"], str):
                raise ValueError(f'{where}: "text" must be a string')
            if tok is None and tokenizer is not None:
                tok = tokenizer()
            if tok is None:
                raise ValueError(
                    f'{where}: "text" input needs a tokenizer, but the checkpoint records '
                    'none; pass "ids" instead'
                )
            ids = tok.encode(obj["text"])
        else:
            ids = obj["ids"]
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise ValueError(f'{where}: "ids" must be a list of integers')
        if not ids:
            raise ValueError(f"{where}: the sequence is empty; it needs at least one id")
        if limit is not None and len(ids) > limit[0]:
            raise ValueError(
                f"{where}: the sequence has {len(ids)} tokens, over the {limit[0]} glmvoice-score "
                f"takes {limit[1]}"
            )
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(
                f"{where}: id {bad[0]} is outside the vocabulary [0, {vocab_size}) of the "
                "checkpoint"
            )
        out.append(Record(obj.get("id", n), np.asarray(ids, np.int32)))
    return out


def _token_logprobs(model: glm.GLMDecoder, tokens: jax.Array, segment_ids: jax.Array):
    """[B, T] ids -> [B, T - 1] float32 log p(tokens[:, i] | tokens[:, :i]), i >= 1."""
    b, t = tokens.shape
    hidden = model.hidden_states(tokens, segment_ids)[:, :-1]  # (B, T-1, D) predicts 1..T-1
    targets = tokens[:, 1:]
    n = t - 1
    blk = min(LOGITS_BLOCK, n)
    pad = -n % blk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    nb = (n + pad) // blk
    h = hidden.reshape(b, nb, blk, -1).swapaxes(0, 1)  # (nb, B, blk, D)
    y = targets.reshape(b, nb, blk).swapaxes(0, 1)  # (nb, B, blk)

    def block(args):
        hb, yb = args
        logits = model.logits(hb).astype(jnp.float32)  # (B, blk, V)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, yb[..., None], axis=-1)[..., 0]
        return picked - lse

    lp = jax.lax.map(block, (h, y))  # (nb, B, blk)
    return lp.swapaxes(0, 1).reshape(b, nb * blk)[:, :n]


@functools.lru_cache(maxsize=4)
def _compiled(cfg: glm.GLMConfig, mesh: jax.sharding.Mesh, preset: str):
    """(jitted scoring fn, param shardings, abstract params); shared by Scorers of one model."""

    def make():
        return glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))

    graphdef, abstract, shardings = sharding.param_shardings(make, mesh, preset)
    batch = sharding.batch_sharding(mesh, preset)

    def fn(params, tokens, segment_ids):
        return _token_logprobs(nnx.merge(graphdef, params), tokens, segment_ids)

    jitted = jax.jit(fn, in_shardings=(shardings, batch, batch), out_shardings=batch)
    return jitted, shardings, abstract


class Scorer:
    """A checkpoint's GLM, sharded over the available devices, scoring batches of sequences.

    Args:
      ckpt: checkpoint path (manager root or step directory).
      mesh: default: all devices on the "fsdp" axis.
      max_tokens_per_batch: rows per batch = this / bucket length (rounded to the device count).
      compute_dtype: activation dtype; float32 is the scoring contract.
      attention_impl: override of the checkpoint's attention implementation ("xla" / "chunked").
    """

    def __init__(
        self,
        ckpt: str,
        *,
        mesh: jax.sharding.Mesh | None = None,
        max_tokens_per_batch: int = 16384,
        compute_dtype: str = "float32",
        attention_impl: str | None = None,
    ):
        self.meta = checkpoint.read_meta(ckpt)
        cfg = checkpoint.model_config_from_meta(self.meta)
        if not isinstance(cfg, glm.GLMConfig):
            raise ValueError(f"checkpoint {ckpt} holds a {type(cfg).__name__}, not a GLM decoder")
        cfg = dataclasses.replace(
            cfg,
            dtype=compute_dtype,
            remat_policy="none",
            attention_impl=attention_impl or cfg.attention_impl,
        )
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else sharding.make_mesh({"fsdp": -1})
        self.preset = "fsdp"
        self.rows_multiple = sharding.data_parallel_size(self.mesh, self.preset)
        self.max_tokens_per_batch = max_tokens_per_batch

        fn, shardings, abstract = _compiled(cfg, self.mesh, self.preset)
        self._fn = fn
        self.params = checkpoint.restore_params(ckpt, checkpoint.abstract_like(abstract, shardings))
        self._batch_sharding = sharding.batch_sharding(self.mesh, self.preset)

    @classmethod
    def live(cls, cfg: glm.GLMConfig, params, shardings, mesh, preset: str) -> Scorer:
        """Scores with parameters already on a mesh (the trainer's, during training): no copy.

        ``params`` / ``shardings`` are ``nnx.to_pure_dict`` trees placed by ``preset``'s rules.
        """
        self = cls.__new__(cls)
        self.meta = {}
        self.cfg = dataclasses.replace(cfg, dtype="float32", remat_policy="none")
        self.mesh, self.preset = mesh, preset
        self.rows_multiple = sharding.data_parallel_size(mesh, preset)
        self.max_tokens_per_batch = 16384
        self._batch_sharding = sharding.batch_sharding(mesh, preset)
        graphdef, _, _ = sharding.param_shardings(
            lambda: glm.GLMDecoder(self.cfg, rngs=nnx.Rngs(0)), mesh, preset
        )
        batch = self._batch_sharding

        def fn(p, tokens, segment_ids):
            return _token_logprobs(nnx.merge(graphdef, p), tokens, segment_ids)

        self._fn = jax.jit(fn, in_shardings=(shardings, batch, batch), out_shardings=batch)
        self.params = params
        return self

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def _batches(self, seqs: Sequence[np.ndarray]) -> Iterable[tuple[int, list[int]]]:
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        groups: dict[int, list[int]] = {}
        for i in order:
            if len(seqs[i]) > 1:
                groups.setdefault(bucket_length(len(seqs[i])), []).append(i)
        for t, idx in sorted(groups.items()):
            rows = max(1, self.max_tokens_per_batch // t)
            rows = -(-rows // self.rows_multiple) * self.rows_multiple
            for s in range(0, len(idx), rows):
                yield t, idx[s : s + rows]

    def score(self, seqs: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """float32 token log-probs ([len - 1]) of each sequence, in input order."""
        out: list[np.ndarray] = [np.zeros((0,), np.float32) for _ in seqs]
        batches = list(self._batches(seqs))
        bar = _progress(sum(len(seqs[i]) for _, idx in batches for i in idx), progress)
        # "highest": true float32 matmuls; the GPU default (TF32) is off by ~1e-3 in log-probs.
        with sharding.activate(self.mesh, self.preset), jax.default_matmul_precision("highest"):
            for t, idx in batches:
                rows = -(-len(idx) // self.rows_multiple) * self.rows_multiple
                tokens = np.zeros((rows, t), np.int32)
                segs = np.zeros((rows, t), np.int32)
                for r, i in enumerate(idx):
                    tokens[r, : len(seqs[i])] = seqs[i]
                    segs[r, : len(seqs[i])] = 1
                lp = np.asarray(
                    self._fn(
                        self.params,
                        jax.device_put(tokens, self._batch_sharding),
                        jax.device_put(segs, self._batch_sharding),
                    )
                )
                for r, i in enumerate(idx):
                    out[i] = lp[r, : len(seqs[i]) - 1].astype(np.float32)
                if bar is not None:
                    bar.update(sum(len(seqs[i]) for i in idx))
        if bar is not None:
            bar.close()
        return out


def _progress(total: int, enabled: bool):
    return progress_lib.bar(total, "score", "tok", unit_scale=True) if enabled else None


def score_file(
    ckpt: str, input_path: str, output_path: str, *, progress: bool = False, **scorer_kwargs
) -> dict:
    """Scores IN.jsonl into OUT.jsonl. Returns {"sequences", "tokens", "seconds"}.

    Raises:
      ValueError: bad input, naming the line (nothing is written then).
    """
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt))
    if not isinstance(cfg, glm.GLMConfig):
        Scorer(ckpt, **scorer_kwargs)  # raises: not a GLM decoder
    impl = scorer_kwargs.get("attention_impl") or cfg.attention_impl
    limit = max_tokens(dataclasses.replace(cfg, attention_impl=impl))
    # The input is checked before the weights are loaded (minutes for a 9B checkpoint).
    records = read_inputs(
        input_path, cfg.vocab_size, lambda: checkpoint.text_tokenizer(ckpt), limit=limit
    )
    scorer = Scorer(ckpt, **scorer_kwargs)
    start = time.perf_counter()
    lps = scorer.score([r.ids for r in records], progress=progress)
    seconds = time.perf_counter() - start
    with open(output_path, "w", encoding="utf-8") as f:
        for r, lp in zip(records, lps, strict=True):
            row = {
                "id": r.id,
                "logprob": float(np.sum(lp, dtype=np.float64)),
                "token_logprobs": [float(x) for x in lp],
            }
            f.write(json.dumps(row) + "\n")
    return {
        "sequences": len(records),
        "tokens": int(sum(len(r.ids) for r in records)),
        "seconds": seconds,
    }
