"""SentencePiece models trained by crossway: nothing is lost, whatever the input."""

from __future__ import annotations

import dataclasses
import random

import pytest

from crossway import load_checkpoint, train
from crossway.data.tokenizers import EOS_ID, UNK_ID, TextCodec
from tests.conftest import REPO, tiny_config

pytest.importorskip("sentencepiece")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
from crossway.data.subword import sentencepiece_codec, train_sentencepiece  # noqa: E402

BIBLE = REPO.parent / "shared" / "data" / "bible" / "train.tsv"
WORDS = ["beginning", "created", "heavens", "earth", "principio", "cielos", "tierra", "without", "form", "void",
         "darkness", "upon", "face", "deep", "spirit", "moved", "waters", "light", "day", "night", "the", "and"]


def fallback_texts() -> list[str]:
    """Used where the Bible corpus is not beside the checkout: seeded sentences over a small word list."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(4000)]


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    if BIBLE.is_file():
        lines = BIBLE.read_text(encoding="utf-8").splitlines()[1:3001]
        texts = [t for line in lines for t in line.split("\t")[1:3]]
    else:
        texts = fallback_texts()
    return sentencepiece_codec(train_sentencepiece(texts, vocab_size=2000))


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.text(max_size=60) | st.text(st.sampled_from("a b\t\n\u2581\ue000\ue001\ue002é中🎉 "), max_size=20))
def test_any_text_round_trips(codec, text):
    ids = codec.encode(text)
    assert UNK_ID not in ids and EOS_ID not in ids
    assert codec.decode(ids) == text


def test_vocabulary_layout_and_a_real_segmentation(codec):
    assert codec.vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert "<0xE4>" in codec.vocab.stoi  # byte-fallback pieces
    text = "the beginning created the heavens and the earth"
    pieces = codec.tokenizer.tokenize(text)
    assert 2 < len(pieces) < len(text) / 2  # subwords, not characters
    again = TextCodec.from_dict(codec.to_dict())
    assert again.encode("señor \u2581 x") == codec.encode("señor \u2581 x")


def test_train_with_a_joint_sentencepiece_model(reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "r", train={"max_steps": 5})
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, src_tokenizer="sentencepiece",
                                                            tgt_tokenizer="sentencepiece", spm_vocab_size=300))
    train(cfg)
    run = load_checkpoint(tmp_path / "r")
    assert run.src.vocab.itos == run.tgt.vocab.itos and run.src.tokenizer.kind == "sentencepiece"
    assert run.src.decode(run.src.encode("abc hg")) == "abc hg"
