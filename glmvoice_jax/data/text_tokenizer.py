"""Text tokenizers behind one interface: GLM-4's tiktoken-format BPE and SentencePiece.

* ``TiktokenTokenizer``: GLM-4's ``tokenizer.model`` (glm4voice.md §5), a text file of
  ``base64(token bytes) rank`` lines (151329 ranks for GLM-4). Text is split on the special
  tokens, pre-tokenised with GLM-4's regex, and each piece is byte-pair merged by rank. Encoding
  prefixes ``[gMASK]<sop>`` like the reference ``build_inputs_with_special_tokens``. Uses the
  ``tiktoken`` package when installed and an identical pure-Python merge loop otherwise.
* ``SentencePieceTokenizer``: a SentencePiece model, trained in memory (``train``) or loaded, for
  the from-scratch demo vocabularies.

A checkpoint records its tokenizer in ``meta["tokenizer"]`` (``{"kind", "dir", "model_file",
"files", ...}``) with the files under ``<checkpoint root>/<dir>/``; ``checkpoint.text_tokenizer``
rebuilds it. Files are read as data only, through etils.epath (local paths or gs://).
"""

from __future__ import annotations

import abc
import base64
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence

import regex
import sentencepiece as spm
from etils import epath

from glmvoice_jax.data import token_layout as token_layout_lib

try:  # optional fast path; the pure-Python BPE below gives the same ids
    import tiktoken
except ImportError:  # pragma: no cover
    tiktoken = None

GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GLM4_PREFIX = token_layout_lib.BOS  # ("[gMASK]", "<sop>")
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]*={0,2} \d+\r?$")


class TextTokenizer(abc.ABC):
    """text <-> ids. ``encode`` adds the model's prefix (e.g. [gMASK]<sop>) unless told not to."""

    kind: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def save(self, directory: str) -> dict:
        """Writes the model file(s) into ``directory``; returns the ``meta["tokenizer"]`` dict."""


def detect_kind(path: str) -> str:
    """Returns "tiktoken" if the first line is ``base64 rank``, else "sentencepiece"."""
    with epath.Path(path).open("rb") as f:
        first = f.readline(4096)
    return "tiktoken" if _TIKTOKEN_LINE.match(first.rstrip(b"\n")) else "sentencepiece"


# ---------------------------------------------------------------------------------------------
# tiktoken-format BPE (GLM-4).


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Parses ``base64 rank`` lines. Raises ValueError naming the file and line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(epath.Path(path).read_bytes().split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        if not _TIKTOKEN_LINE.match(line):
            raise ValueError(f"{path} line {n}: expected 'base64token rank', got {line[:60]!r}")
        tok, rank = line.split()
        ranks[base64.b64decode(tok, validate=True)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


def write_tiktoken_ranks(ranks: Mapping[bytes, int], path: str) -> None:
    lines = (
        base64.b64encode(tok) + b" " + str(rank).encode() + b"\n"
        for tok, rank in sorted(ranks.items(), key=lambda p: p[1])
    )
    epath.Path(path).write_bytes(b"".join(lines))


def bpe_merge(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Byte-pair merge of one pre-token: repeatedly join the adjacent pair of lowest rank."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    try:
        return [ranks[p] for p in parts]
    except KeyError as e:
        raise ValueError(f"byte {e.args[0]!r} has no rank: the vocabulary lacks a byte") from None


class TiktokenTokenizer(TextTokenizer):
    """GLM-4 BPE. Args: ranks (token bytes -> id), specials (string -> id), regex, prefix."""

    kind = "tiktoken"

    def __init__(
        self,
        ranks: Mapping[bytes, int],
        specials: Mapping[str, int],
        *,
        pattern: str = GLM4_PATTERN,
        prefix: Sequence[str] = GLM4_PREFIX,
        use_tiktoken: bool = True,
    ):
        self.ranks = dict(ranks)
        self.specials = dict(specials)
        clash = [t for t, i in self.specials.items() if i < len(self.ranks)]
        if clash:
            raise ValueError(f"special tokens {clash[:5]} have ids inside the BPE ranks")
        missing = [t for t in prefix if t not in self.specials]
        if missing:
            raise ValueError(f"prefix tokens {missing} are not special tokens of this tokenizer")
        self.pattern = pattern
        self.prefix = tuple(prefix)
        self._decoder = {i: t for t, i in self.ranks.items()}
        self._decoder.update({i: t.encode() for t, i in self.specials.items()})
        self._pat = regex.compile(pattern)
        self._special_pat = (
            regex.compile("|".join(regex.escape(t) for t in sorted(self.specials, key=len)[::-1]))
            if self.specials
            else None
        )
        self._enc = None
        if use_tiktoken and tiktoken is not None:
            self._enc = tiktoken.Encoding(
                name="glm4",
                pat_str=pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.specials,
            )

    @classmethod
    def from_file(
        cls, path: str, specials: Mapping[str, int] | None = None, **kwargs
    ) -> TiktokenTokenizer:
        """Loads ``tokenizer.model``; specials default to GLM-4's (glm4voice.md §5)."""
        ranks = read_tiktoken_ranks(path)
        if specials is None:
            specials = {t: i for t, i in token_layout_lib.GLM4_SPECIALS if i >= len(ranks)}
        return cls(ranks, specials, **kwargs)

    @property
    def vocab_size(self) -> int:
        return max(self._decoder) + 1

    def _encode_ordinary(self, text: str) -> list[int]:
        out = []
        for piece in self._pat.findall(text):
            out += bpe_merge(piece.encode("utf-8"), self.ranks)
        return out

    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]:
        ids = [self.specials[t] for t in self.prefix] if add_prefix else []
        if self._enc is not None:
            return ids + self._enc.encode(text, allowed_special="all")
        pos = 0
        for m in self._special_pat.finditer(text) if self._special_pat else ():
            ids += self._encode_ordinary(text[pos : m.start()]) + [self.specials[m.group()]]
            pos = m.end()
        return ids + self._encode_ordinary(text[pos:])

    def decode(self, ids: Sequence[int]) -> str:
        try:
            data = b"".join(self._decoder[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"id {e.args[0]} is not in this tokenizer's vocabulary") from None
        return data.decode("utf-8", errors="replace")

    def save(self, directory: str) -> dict:
        epath.Path(directory).mkdir(parents=True, exist_ok=True)
        write_tiktoken_ranks(self.ranks, str(epath.Path(directory) / "tokenizer.model"))
        return {
            "kind": self.kind,
            "model_file": "tokenizer.model",
            "files": ["tokenizer.model"],
            "specials": [[t, i] for t, i in sorted(self.specials.items(), key=lambda p: p[1])],
            "prefix": list(self.prefix),
            "pattern": self.pattern,
        }


# ---------------------------------------------------------------------------------------------
# SentencePiece.


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model. Args: serialized model proto, ids prepended by ``encode``."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, prefix_ids: Sequence[int] = ()):

        self.model_proto = bytes(model_proto)
        self.prefix_ids = tuple(int(i) for i in prefix_ids)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        vocab_size: int,
        *,
        model_type: str = "bpe",
        user_defined_symbols: Sequence[str] = (),
        prefix_ids: Sequence[int] = (),
    ) -> SentencePieceTokenizer:
        """Trains in memory; byte fallback and no normalisation, so any text round-trips."""
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",  # no NFKC, keep every space: exact round trip
            remove_extra_whitespaces=False,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            user_defined_symbols=list(user_defined_symbols),
            num_threads=1,
            minloglevel=2,
        )
        return cls(buf.getvalue(), prefix_ids)

    @classmethod
    def from_file(cls, path: str, prefix_ids: Sequence[int] = ()) -> SentencePieceTokenizer:
        return cls(epath.Path(path).read_bytes(), prefix_ids)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]:
        ids = list(self.prefix_ids) if add_prefix else []
        return ids + list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save(self, directory: str) -> dict:
        epath.Path(directory).mkdir(parents=True, exist_ok=True)
        (epath.Path(directory) / "tokenizer.model").write_bytes(self.model_proto)
        return {
            "kind": self.kind,
            "model_file": "tokenizer.model",
            "files": ["tokenizer.model"],
            "prefix_ids": list(self.prefix_ids),
        }


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _specials_from_hf(directory: str) -> dict[str, int] | None:
    path = epath.Path(directory) / "tokenizer_config.json"
    if not path.exists():
        return None
    decoder = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
    return {v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict)} or None


def from_meta(meta: Mapping, directory: str) -> TextTokenizer:
    """Rebuilds a tokenizer from ``meta["tokenizer"]`` and the directory holding its files.

    Raises:
      ValueError: unknown kind, or a checkpoint whose tokenizer files are only HF files.
    """
    kind = meta.get("kind")
    path = str(epath.Path(directory) / meta.get("model_file", "tokenizer.model"))
    if kind == "tiktoken":
        specials = (
            {t: int(i) for t, i in meta["specials"]}
            if "specials" in meta
            else _specials_from_hf(directory)
        )
        return TiktokenTokenizer.from_file(
            path,
            specials,
            pattern=meta.get("pattern", GLM4_PATTERN),
            prefix=tuple(meta.get("prefix", GLM4_PREFIX)),
        )
    if kind == "sentencepiece":
        return SentencePieceTokenizer.from_file(path, meta.get("prefix_ids", ()))
    raise ValueError(
        f"tokenizer kind {kind!r} cannot be loaded; known kinds: tiktoken, sentencepiece"
    )
