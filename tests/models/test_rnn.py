import pytest
import torch

from crossway.models import RNNConfig, Seq2Seq, build_rnn, select_batch
from tests.models.grouped import grouped_and_repeated_steps

VARIANTS = [(a, c) for a in ("none", "bahdanau", "luong_dot", "luong_general") for c in ("gru", "lstm")]


def make(attention, cell, **kw):
    torch.manual_seed(0)
    cfg = RNNConfig(attention=attention, cell=cell, emb_dim=8, hidden=12, layers=2, dropout=0.0, **kw)
    return build_rnn(cfg, src_vocab=15, tgt_vocab=13).eval()


def batch():
    src = torch.tensor([[5, 6, 7, 8, 9], [4, 5, 6, 0, 0], [7, 0, 0, 0, 0]])
    tgt_in = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 0], [1, 9, 0, 0]])
    return src, src != 0, tgt_in


@pytest.mark.parametrize("attention,cell", VARIANTS)
def test_protocol_and_step_equals_teacher_forcing(attention, cell):
    model = make(attention, cell)
    assert isinstance(model, Seq2Seq)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)  # (B, T, V)
    memory, state, steps = model.encode(src, mask), None, []
    for t in range(tgt_in.size(1)):
        logits, state = model.decode_step(tgt_in[:, t], memory, state)
        steps.append(logits)
        if attention != "none":
            assert state["attn"].shape == (3, 5)
            assert torch.all(state["attn"][2, 1:] == 0)  # padding gets no attention
    assert full.shape == (3, 4, 13)
    assert (torch.stack(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("attention,cell", VARIANTS)
def test_padding_invariance(attention, cell):
    """A sentence's logits are the same alone and inside a padded batch."""
    model = make(attention, cell)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)
    for i, n in enumerate([5, 3, 1]):
        alone = model(src[i:i + 1, :n], mask[i:i + 1, :n], tgt_in[i:i + 1])
        assert (alone - full[i:i + 1]).abs().max() <= 1e-5


def test_fixed_context_decoder_sees_only_final_state():
    model = make("none", "gru")
    src, mask, _ = batch()
    memory = model.encode(src, mask)
    assert set(memory) == {"mask", "h0"}  # no encoder outputs to attend to
    assert memory["h0"].shape == (3, 2, 24)  # (B, layers, 2 directions x hidden)


def test_select_batch_reorders_state():
    model = make("bahdanau", "lstm")
    src, mask, tgt_in = batch()
    memory = model.encode(src, mask)
    _, state = model.decode_step(tgt_in[:, 0], memory, None)
    idx = torch.tensor([2, 0])
    sub_mem, sub_state = select_batch(memory, idx), select_batch(state, idx)
    logits, _ = model.decode_step(tgt_in[idx, 1], sub_mem, sub_state)
    ref, _ = model.decode_step(tgt_in[:, 1], memory, state)
    assert (logits - ref[idx]).abs().max() <= 1e-6


def test_tied_embeddings_share_the_matrix():
    model = make("luong_general", "gru", tie_embeddings=True)
    assert model.generator.weight is model.embed.weight
    src, mask, tgt_in = batch()
    assert model(src, mask, tgt_in).shape == (3, 4, 13)


def test_unidirectional_single_layer():
    cfg = RNNConfig(attention="bahdanau", bidirectional=False, layers=1, emb_dim=8, hidden=10)
    model = build_rnn(cfg, 15, 13)
    src, mask, tgt_in = batch()
    assert model(src, mask, tgt_in).shape == (3, 4, 13)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="attention"):
        RNNConfig(attention="luong")
    with pytest.raises(ValueError, match="cell"):
        RNNConfig(cell="rnn")
    with pytest.raises(ValueError, match="enc_layers"):
        RNNConfig(layers=2, enc_layers=1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_deeper_encoder_starts_decoder_from_top_layers(cell):
    """enc_layers=3, layers=2: the decoder's two layers start from the encoder's top two final states; the
    step-by-step decode still equals teacher forcing."""
    model = make("bahdanau", cell, enc_layers=3)
    assert model.encoder.rnn.num_layers == 3 and model.rnn.num_layers == 2
    src, mask, tgt_in = batch()
    memory = model.encode(src, mask)
    _, h, c = model.encoder(src, mask)  # (B, 3, 24)
    assert torch.equal(memory["h0"], h[:, 1:])
    if cell == "lstm":
        assert torch.equal(memory["c0"], c[:, 1:])
    full, state, steps = model(src, mask, tgt_in), None, []
    for t in range(tgt_in.size(1)):
        logits, state = model.decode_step(tgt_in[:, t], memory, state)
        steps.append(logits)
    assert (torch.stack(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("attention,cell", VARIANTS)
def test_rows_share_memory_in_groups(attention, cell):
    """G rows per memory row (beam search's beams) decode as against memory repeated G times."""
    src, mask, _ = batch()
    for a, b, grouped, expanded in grouped_and_repeated_steps(make(attention, cell), src, mask)[2]:
        assert (a - b).abs().max() <= 1e-6
        if attention != "none":
            assert (grouped["attn"] - expanded["attn"]).abs().max() <= 1e-6


def test_rnn_features_are_the_generators_input():
    for tie in (False, True):
        torch.manual_seed(0)
        model = build_rnn(RNNConfig(emb_dim=8, hidden=12, layers=1, attention="bahdanau", tie_embeddings=tie,
                                    dropout=0.0), 15, 15).eval()
        src = torch.tensor([[5, 6, 7], [4, 5, 0]])
        tgt_in = torch.tensor([[1, 4, 5], [1, 7, 0]])
        feats = model(src, src != 0, tgt_in, features=True)
        assert torch.equal(model.generator(feats), model(src, src != 0, tgt_in))
