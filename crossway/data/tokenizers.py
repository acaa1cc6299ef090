"""Tokenizers and vocabularies.

A tokenizer turns a string into a list of token strings and back; a `Vocab` maps token strings to ids.
Both are saved with the model as plain JSON (`to_dict` / `from_dict`), so a checkpoint needs no side files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from crossway.errors import ConfigError

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


@dataclass(frozen=True)
class WordTokenizer:
    """Whitespace-separated tokens (words, or phonemes in G2P). `detokenize` joins with one space."""

    kind: str = "word"
    lowercase: bool = False

    def tokenize(self, text: str) -> list[str]:
        return (text.lower() if self.lowercase else text).split()

    def detokenize(self, tokens: list[str]) -> str:
        return " ".join(tokens)


TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer}


def make_tokenizer(kind: str, lowercase: bool = False) -> CharTokenizer | WordTokenizer:
    if kind not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {kind!r}; valid: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind](lowercase=lowercase)


@dataclass
class TextCodec:
    """A tokenizer plus its vocabulary: string <-> list of ids (without bos/eos)."""

    tokenizer: CharTokenizer | WordTokenizer
    vocab: Vocab

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(self.tokenizer.tokenize(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.detokenize(self.vocab.decode(ids))

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.kind, "lowercase": self.tokenizer.lowercase, **self.vocab.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> TextCodec:
        return cls(make_tokenizer(d["tokenizer"], d.get("lowercase", False)), Vocab.from_dict(d))
