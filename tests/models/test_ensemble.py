import json
import shutil

import pytest
import torch

from crossway.data.batching import pad
from crossway.decoding import DecodeConfig, decode
from crossway.errors import CheckpointError
from crossway.models import RNNConfig, TransformerConfig, build_rnn, build_transformer
from crossway.models.ensemble import Ensemble
from crossway.models.interface import select_batch
from crossway.training.checkpoint import load_checkpoint, load_models
from tests.decoding.test_beam import sentences
from tests.models.grouped import grouped_and_repeated_steps


def members():
    torch.manual_seed(0)
    rnn = build_rnn(RNNConfig(attention="bahdanau", emb_dim=16, hidden=16, dropout=0.0), 20, 16).eval()
    torch.manual_seed(1)
    tf = build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=2,
                                             dropout=0.0), 20, 16).eval()
    return rnn, tf


@torch.no_grad()
def test_step_is_the_log_of_the_members_mean_probability():
    rnn, tf = members()
    ens = Ensemble([rnn, tf])
    src = pad(sentences(6))
    mask = src != 0
    mems = [m.encode(src, mask) for m in (rnn, tf)]
    memory = ens.encode(src, mask)
    states, state = [None, None], None
    for tok in torch.randint(4, 10, (5, 6)):
        out, state = ens.decode_step(tok, memory, state)
        probs = []
        for j, m in enumerate((rnn, tf)):
            logits, states[j] = m.decode_step(tok, mems[j], states[j])
            probs.append(torch.softmax(logits, -1))
        torch.testing.assert_close(out, torch.log((probs[0] + probs[1]) / 2), atol=1e-6, rtol=0)
        assert torch.logsumexp(out, -1).abs().max() < 1e-5  # a distribution: usable as logits as they are


@torch.no_grad()
def test_grouped_rows_and_attention():
    ens = Ensemble(list(members()))
    src = pad(sentences(4))
    _, _, steps = grouped_and_repeated_steps(ens, src, src != 0, G=3, attention=True)
    for grouped, repeated, sg, _ in steps:
        torch.testing.assert_close(grouped, repeated, atol=1e-5, rtol=0)
        assert sg["attn"].shape == (12, src.size(1))
        torch.testing.assert_close(sg["attn"].sum(-1), torch.ones(12), atol=1e-5, rtol=0)
    memory = ens.encode(src, src != 0)
    assert all(v.size(0) == 4 for v in select_batch(memory, torch.tensor([3, 0, 0, 1])).values())


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_two_copies_decode_like_the_model(strategy):
    cfg = DecodeConfig(strategy=strategy, beam_size=4, n_best=2 if strategy == "beam" else 1, max_len_b=8)
    src = pad(sentences())
    for model in members():
        alone = decode(model, src, src != 0, cfg)
        twice = decode(Ensemble([model, model]), src, src != 0, cfg)
        for a, b in zip(alone, twice, strict=True):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_teacher_forced_forward_matches_steps():
    ens = Ensemble(list(members()))
    src = pad(sentences(3))
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), torch.randint(4, 10, (3, 4))], 1)
    with torch.no_grad():
        full = ens(src, src != 0, tgt_in)  # (B, T, V)
        memory, state = ens.encode(src, src != 0), None
        for t in range(tgt_in.size(1)):
            out, state = ens.decode_step(tgt_in[:, t], memory, state)
            torch.testing.assert_close(out, full[:, t], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="features"):
        ens(src, src != 0, tgt_in, features=True)
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([members()[0]])


def test_load_models(served_runs, tmp_path):
    runs = [served_runs["rnn"], served_runs["transformer"]]
    assert isinstance(load_models(runs[:1]).model, type(load_checkpoint(runs[0]).model))
    loaded = load_models(runs)
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 2
    assert loaded.config.model.arch == "rnn" and not loaded.model.training
    # same size, different order: weights load, but ids mean other tokens
    other = tmp_path / "other"
    shutil.copytree(load_checkpoint(runs[1]).path, other)
    vocab = json.loads((other / "vocab.json").read_text())
    tokens = vocab["tgt"]["tokens"]
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="tgt vocabulary differs"):
        load_models([runs[0], other])
    # the tightest input limit of the members applies
    shorter = tmp_path / "shorter"
    shutil.copytree(load_checkpoint(runs[1]).path, shorter)
    config = json.loads((shorter / "config.json").read_text())
    config["data"]["max_src_len"] = 7
    (shorter / "config.json").write_text(json.dumps(config))
    assert load_models(runs[:1]).config.data.max_src_len == 20
    assert load_models([runs[0], shorter]).config.data.max_src_len == 7
