"""Training SentencePiece subword models (Kudo & Richardson 2018) from the training data.

The model is trained in memory and stored inside the checkpoint's vocabulary JSON, so a run needs no side
files. Settings chosen so that no input is lost: byte fallback (a character outside the vocabulary becomes its
UTF-8 bytes, not <unk>), identity normalization (no NFKC folding) and whitespace kept as it is; the one character
SentencePiece itself cannot carry, its meta symbol U+2581, is escaped by the tokenizer (see tokenizers.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from crossway.data.tokenizers import SentencePieceTokenizer, TextCodec, Vocab, _require
from crossway.errors import ConfigError

MODEL_TYPES = ("unigram", "bpe")


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
                        sample: int = 2_000_000, threads: int = 1) -> SentencePieceTokenizer:
    """A SentencePiece tokenizer trained on `texts` (at most `sample` lines, drawn at random by SentencePiece)."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"data.spm_model_type must be one of {list(MODEL_TYPES)}, not {model_type!r}")
    spm = _require("sentencepiece")
    escaped = (SentencePieceTokenizer.escape(t) for t in texts if t)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=escaped, model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            remove_extra_whitespaces=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_piece="<unk>",
            input_sentence_size=sample, shuffle_input_sentence=True, num_threads=threads, minloglevel=2,
            hard_vocab_limit=False)
    except RuntimeError as e:
        hint = " (the 256 byte pieces and every distinct character need a place)" if "required_chars" in str(e) else ""
        raise ConfigError(f"SentencePiece training failed with data.spm_vocab_size={vocab_size}{hint}: {e}") from None
    return SentencePieceTokenizer(buf.getvalue(), language_codes=False, escape_meta=True)


def sentencepiece_codec(tokenizer: SentencePieceTokenizer) -> TextCodec:
    """The codec of a trained model: crossway's four specials, then every piece in SentencePiece's order."""
    sp = tokenizer._sp
    return TextCodec(tokenizer, Vocab(sp.id_to_piece(i) for i in range(sp.get_piece_size())))
