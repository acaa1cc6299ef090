"""Forced decoding: the score of a given output is the teacher-forced log-probability, and what search reports."""

from __future__ import annotations

import pytest
import torch

from crossway.data.batching import pad
from crossway.decoding import DecodeConfig, decode
from crossway.decoding.score import force_decode, sequence_scores
from crossway.models.rnn import RNNConfig, build_rnn
from crossway.models.transformer import TransformerConfig, build_transformer


def models():
    torch.manual_seed(0)
    yield build_rnn(RNNConfig(cell="lstm", attention="bahdanau", emb_dim=16, hidden=16, dropout=0.0), 20, 16).eval()
    yield build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=2,
                                              dropout=0.0), 20, 16).eval()


SOURCES = [[5, 6, 7, 8, 9], [10, 11], [4, 12, 13]]
TARGETS = [[4, 5, 6], [7], []]  # the last: eos straight away


@pytest.mark.parametrize("model", list(models()), ids=["rnn", "transformer"])
def test_forced_score_is_the_teacher_forced_log_probability(model):
    src = pad(SOURCES)
    tgt_in = pad([[1, *t] for t in TARGETS])
    tgt_out = pad([[*t, 2] for t in TARGETS])
    with torch.no_grad():
        logp = model(src, src != 0, tgt_in).log_softmax(-1).gather(2, tgt_out.unsqueeze(2)).squeeze(2)  # (B, T)
    expected = logp.masked_fill(tgt_out == 0, 0.0).sum(1)
    torch.testing.assert_close(force_decode(model, src, src != 0, tgt_in, tgt_out), expected, atol=1e-5, rtol=0)
    scores = sequence_scores(model, list(zip(SOURCES, TARGETS, strict=True)), max_tokens=6)  # several batches
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("model", list(models()), ids=["rnn", "transformer"])
def test_forced_score_equals_the_search_score(model):
    src = pad(SOURCES)
    nbest = decode(model, src, src != 0, DecodeConfig(strategy="beam", beam_size=4, n_best=3, max_len_b=6))
    pairs = [(s, h.tokens) for s, hyps in zip(SOURCES, nbest, strict=True) for h in hyps if h.finished]
    expected = [h.score for hyps in nbest for h in hyps if h.finished]
    assert len(pairs) >= 3
    assert sequence_scores(model, pairs) == pytest.approx(expected, abs=1e-4)
