"""SentencePiece models trained by crossway: nothing is lost, whatever the input."""

from __future__ import annotations

import dataclasses

import pytest

from crossway import load_checkpoint, train
from crossway.data.tokenizers import EOS_ID, UNK_ID, TextCodec
from tests.conftest import REPO, tiny_config

pytest.importorskip("sentencepiece")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
from crossway.data.subword import sentencepiece_codec, train_sentencepiece  # noqa: E402

BIBLE = REPO.parent / "shared" / "data" / "bible" / "train.tsv"
FALLBACK = ["In the beginning God created the heavens and the earth.",
            "En el principio crió Dios los cielos y la tierra.", "And the earth was without form, and void."] * 200


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    if BIBLE.is_file():
        lines = BIBLE.read_text(encoding="utf-8").splitlines()[1:3001]
        texts = [t for line in lines for t in line.split("\t")[1:3]]
    else:
        texts = FALLBACK
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
    pieces = codec.tokenizer.tokenize("In the beginning God created the heavens")
    assert 2 < len(pieces) < 20  # subwords, not characters
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
