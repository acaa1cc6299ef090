"""Streaming training data: bounded memory, mixing by weight, determinism, and training on a stream."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc

import pytest

from crossway import train
from crossway.data.stream import StreamingCorpus
from crossway.data.text import iter_tsv
from crossway.data.tokenizers import CharTokenizer, TextCodec, Vocab, WordTokenizer
from crossway.errors import ConfigError
from tests.conftest import reversal_rows, tiny_config, write_tsv

SRC = TextCodec(CharTokenizer(), Vocab("abcdefgh"))
TGT = TextCodec(WordTokenizer(), Vocab("abcdefgh"))


def corpus(paths, weights=None, max_len=20):
    return StreamingCorpus.scan([str(p) for p in paths], weights, lambda p: iter_tsv(p), SRC, TGT, max_len, max_len)


def test_memory_stays_bounded_on_a_corpus_much_larger_than_the_buffer(tmp_path):
    path = tmp_path / "big.tsv"
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:  # 100k pairs, ~1.5 MB on disk, ~40 MB as Python objects
        for _ in range(100_000):
            s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 12)))
            f.write(f"{s}\t{' '.join(reversed(s))}\n")
    tracemalloc.start()
    c, (report,) = corpus([path])
    scan_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    n_batches = n_examples = 0
    for batch in c.batches(epoch=0, max_tokens=400, buffer_size=2000, seed=1):
        n_batches += 1
        n_examples += len(batch)
    stream_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.kept == 100_000 and n_examples == 100_000 and n_batches > 500
    assert scan_peak < 5e6 and stream_peak < 5e6, (scan_peak, stream_peak)  # a few MB, whatever the corpus size


def test_epochs_are_reproducible_and_differ_between_epochs(tmp_path):
    path = write_tsv(tmp_path / "a.tsv", reversal_rows(3000, seed=1))
    c, _ = corpus([path])
    lines = lambda epoch: [[e.line for e in b] for b in c.batches(epoch, 300, 500, seed=3)]  # noqa: E731
    assert lines(0) == lines(0) and lines(0) != lines(1)
    assert sorted(x for b in lines(0) for x in b) == list(range(1, 3001))  # each example once per epoch
    for b in c.batches(0, 300, 500, seed=3):
        assert max(max(len(e.src), len(e.tgt) + 1) for e in b) * len(b) <= 300


def test_weights_mix_corpora(tmp_path):
    a = write_tsv(tmp_path / "a.tsv", [("aaa", "a a a")] * 1000)
    b = write_tsv(tmp_path / "b.tsv", [("bbb", "b b b")] * 100)
    natural, _ = corpus([a, b])
    upsampled, _ = corpus([a, b], weights=[1, 1])
    count_b = lambda c: sum(e.src[0] == SRC.vocab.stoi["b"] for e in c.examples(0, seed=1))  # noqa: E731
    assert 60 < count_b(natural) < 140  # ~ 100 of 1100
    assert 450 < count_b(upsampled) < 650  # ~ half: b cycles ~5.5 times
    with pytest.raises(ConfigError, match="one positive weight per training file"):
        corpus([a, b], weights=[1])


def test_skipped_lines_are_counted_at_scan_time(tmp_path):
    path = write_tsv(tmp_path / "a.tsv", [("abc", "c b a"), ("", "x"), ("a" * 30, "a"), ("ab", "b a")])
    c, (report,) = corpus([path])
    assert report.kept == 2 and sum(report.skipped.values()) == 2 and len(c) == 2


def test_blank_lines_are_skipped_and_counted_at_scan_time_and_never_streamed(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("\nabc\tc b a\n \nab\tb a\n\n")  # blank first line, blank lines in the middle and at the end
    c, (report,) = corpus([path])
    assert report.kept == 2 and report.skipped == {"empty source or target": 3}
    assert report.first_lines == {"empty source or target": [1, 3, 5]}
    assert sorted(e.line for b in c.batches(0, 100, 10, seed=1) for e in b) == [2, 4]


def test_training_on_a_stream_of_two_weighted_corpora_and_exact_resume(reversal_data, tmp_path):
    extra = write_tsv(tmp_path / "extra.tsv", reversal_rows(500, seed=9))

    def cfg(out, **train_kw):
        c = tiny_config(reversal_data, out, model={"dropout": 0.3},
                        train={"max_epochs": 2, "log_every": 1, **train_kw})
        return dataclasses.replace(c, data=dataclasses.replace(
            c.data, streaming=True, buffer_size=700, train=f"{reversal_data['train']},{extra}", train_weights="2,1"))

    whole = train(cfg(tmp_path / "a"))
    assert whole.epoch == 2
    train(cfg(tmp_path / "b", max_steps=whole.step // 2 + 3))
    train(cfg(tmp_path / "b"), resume=True)
    from tests.training.test_loop import weights

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all((a[k] == b[k]).all() for k in a)


def test_several_training_files_need_streaming(reversal_data, tmp_path):
    c = tiny_config(reversal_data, tmp_path / "r")
    c = dataclasses.replace(c, data=dataclasses.replace(c.data, train=f"{reversal_data['train']},x.tsv"))
    with pytest.raises(ConfigError, match="need data.streaming=true"):
        train(c)
