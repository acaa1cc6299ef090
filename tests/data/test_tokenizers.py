import pytest

from crossway.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharTokenizer,
    TextCodec,
    Vocab,
    WordTokenizer,
    make_tokenizer,
)
from crossway.errors import ConfigError


def test_specials_have_fixed_ids():
    v = Vocab(["a", "b"])
    assert (v.stoi["<pad>"], v.stoi["<bos>"], v.stoi["<eos>"], v.stoi["<unk>"]) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)


def test_build_is_frequency_ordered_and_deterministic():
    v = Vocab.build([["b", "a", "b"], ["c", "a", "b"]])
    assert v.itos[4:] == ["b", "a", "c"]
    assert Vocab.build([["x"], ["y"]]).itos == Vocab.build([["y"], ["x"]]).itos
    assert "c" not in Vocab.build([["b", "a", "b"], ["c", "a", "b"]], min_freq=2).stoi


def test_unknown_tokens_map_to_unk_and_decode_stops_at_eos():
    v = Vocab(["a", "b"])
    assert v.encode(["a", "z"]) == [4, UNK_ID]
    assert v.decode([BOS_ID, 4, 5, EOS_ID, 4]) == ["a", "b"]


@pytest.mark.parametrize("tok,text", [(CharTokenizer(), "naïve café 日本"), (WordTokenizer(), "HH AH0 L OW1")])
def test_tokenizer_round_trip(tok, text):
    assert tok.detokenize(tok.tokenize(text)) == text


def test_codec_round_trip_through_json():
    codec = TextCodec(CharTokenizer(), Vocab.build([list("hello world")]))
    restored = TextCodec.from_dict(codec.to_dict())
    assert restored.vocab.itos == codec.vocab.itos and restored.tokenizer == codec.tokenizer
    assert restored.decode(restored.encode("hello")) == "hello"


def test_unknown_tokenizer_lists_valid_ones():
    with pytest.raises(ConfigError, match="char, word"):
        make_tokenizer("bpe")


def test_lowercase_option_survives_json():
    codec = TextCodec(make_tokenizer("char", lowercase=True), Vocab(list("ab")))
    restored = TextCodec.from_dict(codec.to_dict())
    assert restored.encode("AB") == restored.encode("ab") == [4, 5]


def test_text_spelling_a_special_token_is_unknown():
    v = Vocab(["a"])
    assert v.encode(["<pad>", "<eos>", "<bos>", "<unk>", "a"]) == [UNK_ID] * 4 + [4]


def test_missing_tokenizer_survives_json_and_says_why():
    from crossway.data.tokenizers import MissingTokenizer
    from crossway.errors import CheckpointError

    codec = TextCodec(MissingTokenizer("dir had no source.spm"), Vocab(["a"]))
    restored = TextCodec.from_dict(codec.to_dict())
    assert restored.vocab.itos == codec.vocab.itos
    with pytest.raises(CheckpointError, match="no tokenizer: dir had no source.spm"):
        restored.encode("a")


def test_sentencepiece_codec_survives_json():
    spm = pytest.importorskip("sentencepiece")
    import io

    from crossway.data.tokenizers import SentencePieceTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world", "hello there", "world peace"] * 20),
                                   model_writer=buf, vocab_size=15, minloglevel=2)
    tok = SentencePieceTokenizer(buf.getvalue(), add_eos=True)
    codec = TextCodec(tok, Vocab(dict.fromkeys(tok.tokenize("hello world there"))))
    restored = TextCodec.from_dict(codec.to_dict())
    assert restored.encode("hello world") == codec.encode("hello world") and restored.encode("hello")[-1] == EOS_ID
    assert restored.encode("") == [] and restored.decode(restored.encode("hello world")) == "hello world"
