import math

import pytest
import torch

from crossway import train
from crossway.models import RNNConfig, TransformerConfig, build_rnn, build_transformer
from crossway.training.scheduled_sampling import (
    mix,
    stepwise_logits,
    training_loss,
    truth_probability,
    two_pass_logits,
)
from tests.conftest import tiny_config

SRC = torch.tensor([[5, 6, 7, 8], [4, 5, 0, 0]])
TGT_IN = torch.tensor([[1, 4, 5, 6, 7], [1, 7, 8, 0, 0]])


def rnn():
    torch.manual_seed(0)
    return build_rnn(RNNConfig(attention="luong_general", emb_dim=8, hidden=8, dropout=0.0), 10, 10)


def transformer():
    torch.manual_seed(0)
    return build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1,
                                               dropout=0.0), 10, 10)


def test_probability_zero_mixes_nothing():
    predicted = torch.full_like(TGT_IN, 9)
    assert torch.equal(mix(TGT_IN, predicted, 0.0), TGT_IN)
    mixed = mix(TGT_IN, predicted, 1.0)
    assert torch.equal(mixed[TGT_IN != 0], predicted[TGT_IN != 0]) and torch.all(mixed[TGT_IN == 0] == 0)


@pytest.mark.parametrize("make,fn", [(rnn, stepwise_logits), (transformer, stepwise_logits),
                                     (transformer, two_pass_logits)])
def test_probability_zero_equals_teacher_forcing(make, fn):
    model = make()
    mask = SRC != 0
    reference = model(SRC, mask, TGT_IN)
    assert torch.allclose(fn(model, SRC, mask, TGT_IN, 0.0), reference, atol=1e-5)
    # the training loss with probability 0 is teacher forcing's, exactly, in every mode
    tgt_out = torch.cat([TGT_IN[:, 1:], torch.zeros(2, 1, dtype=torch.long)], 1)
    forced = training_loss(model, SRC, mask, TGT_IN, tgt_out, "none", 0.0, 0.1)
    for mode in ("two_pass", "stepwise"):
        loss, nll, n = training_loss(model, SRC, mask, TGT_IN, tgt_out, mode, 0.0, 0.1)
        assert torch.equal(loss, forced[0]) and torch.equal(nll, forced[1]) and n == forced[2]


@pytest.mark.parametrize("mode", ["two_pass", "stepwise"])
def test_training_loss_with_sampling_differs_from_teacher_forcing(mode):
    model = transformer().eval()
    mask = SRC != 0
    tgt_out = torch.cat([TGT_IN[:, 1:], torch.zeros(2, 1, dtype=torch.long)], 1)
    forced, _, _ = training_loss(model, SRC, mask, TGT_IN, tgt_out, "none", 0.0, 0.1)
    torch.manual_seed(1)
    mixed, _, n = training_loss(model, SRC, mask, TGT_IN, tgt_out, mode, 1.0, 0.1)
    assert n == 6 and not torch.allclose(mixed, forced)


def test_probability_one_feeds_predictions():
    model = transformer().eval()
    mask = SRC != 0
    assert not torch.allclose(two_pass_logits(model, SRC, mask, TGT_IN, 1.0), model(SRC, mask, TGT_IN))
    torch.manual_seed(1)
    assert not torch.allclose(stepwise_logits(model, SRC, mask, TGT_IN, 1.0), model(SRC, mask, TGT_IN))


def test_schedules():
    assert truth_probability(0, "linear", 100, 0.0) == 1.0
    assert truth_probability(50, "linear", 100, 0.0) == pytest.approx(0.5)
    assert truth_probability(500, "linear", 100, 0.2) == 0.2
    assert truth_probability(10, "exponential", 0.9, 0.0) == pytest.approx(0.9 ** 10)
    assert truth_probability(1000, "inverse_sigmoid", 500, 0.0) == pytest.approx(500 / (500 + math.exp(2)))
    assert truth_probability(10**9, "inverse_sigmoid", 500, 0.3) == 0.3


@pytest.mark.parametrize("mode,model", [("stepwise", {"attention": "bahdanau"}),
                                        ("two_pass", {"arch": "transformer", "d_model": 16, "heads": 2,
                                                      "ff_dim": 32, "enc_layers": 1, "dec_layers": 1})])
def test_training_runs_with_scheduled_sampling(mode, model, reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "r", model=model,
                      train={"max_steps": 5, "scheduled_sampling": mode, "ss_schedule": "linear", "ss_k": 5,
                             "ss_floor": 0.5})
    state = train(cfg)
    assert state.step == 5
