"""Tokenizers and vocabularies.

A tokenizer turns a string into a list of token strings and back; a `Vocab` maps token strings to ids.
Both are saved with the model as plain JSON (`to_dict` / `from_dict`), so a checkpoint needs no side files.
The subword tokenizers of imported Hugging Face models (SentencePiece for Marian, byte-level BPE for BART) keep
their model in that JSON too; their packages are imported only when such a tokenizer is first used.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from crossway.errors import CheckpointError, ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class Vocab:
    """Token string <-> id. Ids 0-3 are always pad, bos, eos, unk."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for t in tokens:
            if t not in SPECIALS:
                self.itos.append(t)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Most frequent first, ties broken alphabetically so the vocabulary is deterministic."""
        counts = Counter(t for toks in token_lists for t in toks)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        """Text that spells a special token ("<eos>") is an ordinary unknown token, never the special id."""
        return [UNK_ID if t in SPECIALS else self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids to tokens, stopping at eos and skipping pad/bos."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(self.itos[i])
        return out

    def to_dict(self) -> dict:
        return {"tokens": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if d["tokens"][: len(SPECIALS)] != list(SPECIALS):
            raise ValueError("vocabulary does not start with the special tokens")
        return cls(d["tokens"])


@dataclass(frozen=True)
class CharTokenizer:
    """One token per Unicode character. `detokenize` joins with no separator."""

    kind: str = "char"
    lowercase: bool = False

    def tokenize(self, text: str) -> list[str]:
        return list(text.lower() if self.lowercase else text)

    def detokenize(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def to_dict(self) -> dict:
        return {"tokenizer": self.kind, "lowercase": self.lowercase}


@dataclass(frozen=True)
class WordTokenizer:
    """Whitespace-separated tokens (words, or phonemes in G2P). `detokenize` joins with one space."""

    kind: str = "word"
    lowercase: bool = False

    def tokenize(self, text: str) -> list[str]:
        return (text.lower() if self.lowercase else text).split()

    def detokenize(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def to_dict(self) -> dict:
        return {"tokenizer": self.kind, "lowercase": self.lowercase}


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"this model's tokenizer needs the package {module!r}: pip install 'crossway[hf]'") from None


@dataclass(frozen=True, eq=False)
class SentencePieceTokenizer:
    """SentencePiece (Kudo & Richardson 2018) from a serialized model, as Marian uses it. A leading language code
    such as ">>fra<<" stays one token (as in Hugging Face's MarianTokenizer). `prefix` tokens start every
    encoded text and `add_eos` ends it with eos (Marian and T5 sources end with eos); `detokenize` drops both and
    the special tokens. `added` tokens (T5's sentinels "<extra_id_0>" ...) stay one token where the text spells
    them and, as Hugging Face's special tokens, are left out of detokenized text. Empty text has no tokens (and
    so no prefix or eos; translate gives "" for it)."""

    model: bytes
    prefix: tuple[str, ...] = ()
    add_eos: bool = False
    language_codes: bool = True  # a leading ">>xx<<" is one token (Marian); off for models crossway trains
    escape_meta: bool = False  # carry U+2581 (SentencePiece's space symbol) through unchanged (models crossway trains)
    added: tuple[str, ...] = ()
    kind: str = field(default="sentencepiece", init=False)
    lowercase: bool = field(default=False, init=False)

    # U+2581 would come back as a space, so models crossway trains see it escaped with a private-use character:
    # E000 -> E000 E001 and 2581 -> E000 E002 (byte-fallback pieces), undone after decoding.
    @staticmethod
    def escape(text: str) -> str:
        return text.replace("\ue000", "\ue000\ue001").replace("\u2581", "\ue000\ue002")

    @staticmethod
    def unescape(text: str) -> str:
        return text.replace("\ue000\ue002", "\u2581").replace("\ue000\ue001", "\ue000")

    @cached_property
    def _sp(self):
        sp = _require("sentencepiece").SentencePieceProcessor()
        sp.LoadFromSerializedProto(self.model)
        return sp

    def tokenize(self, text: str) -> list[str]:
        code = []
        if self.language_codes and text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2:]
        if self.escape_meta:
            text = self.escape(text)
        if self.added:  # the added tokens themselves, and the text between them in pieces
            parts = re.split("(" + "|".join(map(re.escape, self.added)) + ")", text)
            pieces = [*code, *(p for i, part in enumerate(parts) if part
                               for p in ([part] if i % 2 else self._sp.encode(part, out_type=str)))]
        else:
            pieces = [*code, *self._sp.encode(text, out_type=str)]
        return [*self.prefix, *pieces] if pieces else []

    def detokenize(self, tokens: list[str]) -> str:
        drop = {*SPECIALS, *self.prefix, *self.added}
        text = self._sp.decode_pieces([t for t in tokens if t not in drop])
        return self.unescape(text) if self.escape_meta else text

    def to_dict(self) -> dict:
        return {"tokenizer": self.kind, "model": base64.b64encode(self.model).decode("ascii"),
                "prefix": list(self.prefix), "add_eos": self.add_eos, "language_codes": self.language_codes,
                "escape_meta": self.escape_meta, **({"added": list(self.added)} if self.added else {})}


@dataclass(frozen=True, eq=False)
class ByteLevelBPETokenizer:
    """Byte-level BPE (Radford et al. 2019) as BART and RoBERTa use it: GPT-2 pre-tokenization without a prefix
    space, merges applied in rank order. The vocabulary is the one the tokenizer is paired with (`tokens`).
    `prefix` and `add_eos` as for SentencePieceTokenizer (BART: prefix "<s>", sources end with eos)."""

    merges: tuple[str, ...]
    tokens: tuple[str, ...]
    prefix: tuple[str, ...] = ()
    add_eos: bool = False
    kind: str = field(default="bytelevel_bpe", init=False)
    lowercase: bool = field(default=False, init=False)

    @cached_property
    def _bpe(self):
        tk = _require("tokenizers")
        bpe = tk.models.BPE({t: i for i, t in enumerate(self.tokens)}, [tuple(m.split(" ")) for m in self.merges],
                            continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        tok = tk.Tokenizer(bpe)
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        return tok

    def tokenize(self, text: str) -> list[str]:
        pieces = self._bpe.encode(text, add_special_tokens=False).tokens
        return [*self.prefix, *pieces] if pieces else []

    def detokenize(self, tokens: list[str]) -> str:
        return self._bpe.decoder.decode([t for t in tokens if t not in SPECIALS and t not in self.prefix])

    def to_dict(self) -> dict:
        return {"tokenizer": self.kind, "merges": list(self.merges), "prefix": list(self.prefix),
                "add_eos": self.add_eos}


TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer}


def make_tokenizer(kind: str, lowercase: bool = False) -> CharTokenizer | WordTokenizer:
    if kind not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {kind!r}; valid: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind](lowercase=lowercase)


@dataclass(frozen=True)
class MissingTokenizer:
    """Stands in for the tokenizer of a model imported without its tokenizer files: ids work, text does not."""

    reason: str
    kind: str = field(default="missing", init=False)
    lowercase: bool = field(default=False, init=False)

    def tokenize(self, text: str) -> list[str]:
        raise CheckpointError(f"this model has no tokenizer: {self.reason}")

    detokenize = tokenize

    def to_dict(self) -> dict:
        return {"tokenizer": self.kind, "reason": self.reason}


Tokenizer = CharTokenizer | WordTokenizer | SentencePieceTokenizer | ByteLevelBPETokenizer | MissingTokenizer


@dataclass
class TextCodec:
    """A tokenizer plus its vocabulary: string <-> list of ids (without bos; with eos only where the tokenizer
    asks for it, as the sources of imported Hugging Face models do). Text that yields no token encodes to []."""

    tokenizer: Tokenizer
    vocab: Vocab
    reverse: bool = False  # ids run right to left (a right-to-left model's target side, data.tgt_reverse)
    prefix: str = ""  # text put before every non-empty input (a T5-style task prefix, data.src_prefix)

    def encode(self, text: str) -> list[int]:
        ids = self.vocab.encode(self.tokenizer.tokenize(self.prefix + text if self.prefix and text else text))
        ids = ids[::-1] if self.reverse else ids
        return ids + [EOS_ID] if ids and getattr(self.tokenizer, "add_eos", False) else ids

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Ids (up to eos) -> tokens in reading order, whichever way the ids run."""
        toks = self.vocab.decode(ids)
        return toks[::-1] if self.reverse else toks

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.detokenize(self.tokens(ids))

    @property
    def size(self) -> int:
        """The vocabulary size: what a model's embedding or output layer is built with."""
        return len(self.vocab)

    # --- as a model's source (the interface ImageFormat shares; see crossway.inference) ----------------------
    def cost(self, ids: list[int]) -> int:
        """Batching cost of an encoded source: its tokens (0 = an empty input)."""
        return len(ids)

    def collate(self, items: list[list[int]]):
        """Encoded sources -> (src (B, S) long, padded with PAD_ID, src_mask (B, S) bool)."""
        import torch

        src = torch.full((len(items), max((len(s) for s in items), default=0)), PAD_ID, dtype=torch.long)
        for i, s in enumerate(items):
            src[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return src, src != PAD_ID

    def unknown(self, ids: list[int]) -> int:
        """Input tokens outside the vocabulary (decoded as <unk>)."""
        return sum(i == UNK_ID for i in ids)

    def describe(self, ids: list[int]) -> list[str]:
        """The source as the model saw it: its tokens."""
        return self.vocab.decode(ids)

    def attention_view(self, ids: list[int], attention):
        """Attention rows (..., S) over this source's tokens, as they are."""
        return attention

    def to_dict(self) -> dict:
        return {**self.tokenizer.to_dict(), **self.vocab.to_dict(), **({"reverse": True} if self.reverse else {}),
                **({"text_prefix": self.prefix} if self.prefix else {})}

    @classmethod
    def from_dict(cls, d: dict) -> TextCodec:
        vocab = Vocab.from_dict(d)
        return cls(_tokenizer_from_dict(d, vocab), vocab, bool(d.get("reverse", False)), d.get("text_prefix", ""))


def _tokenizer_from_dict(d: dict, vocab: Vocab) -> Tokenizer:
    kind, framing = d["tokenizer"], {"prefix": tuple(d.get("prefix", ())), "add_eos": d.get("add_eos", False)}
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model"]), **framing,
                                      language_codes=d.get("language_codes", True),
                                      escape_meta=d.get("escape_meta", False), added=tuple(d.get("added", ())))
    if kind == "missing":
        return MissingTokenizer(d["reason"])
    if kind == "bytelevel_bpe":
        return ByteLevelBPETokenizer(tuple(d["merges"]), tuple(vocab.itos), **framing)
    return make_tokenizer(kind, d.get("lowercase", False))
