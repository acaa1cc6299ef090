"""Show-Attend-Tell and the Transformer over an image grid: the protocol properties text models have, on images."""

from __future__ import annotations

import pytest
import torch

from crossway.decoding import DecodeConfig, decode
from crossway.models.image_encoder import ImageEncoder, grid_shape
from crossway.models.sat import SATConfig, build_sat
from tests.models.grouped import grouped_and_repeated_steps

V = 14
DECODERS = [{"decoder": "lstm"}, {"decoder": "transformer", "dec_layers": 2, "dim": 64, "heads": 4, "ff_dim": 128},
            {"decoder": "transformer", "enc_layers": 1, "dim": 64, "heads": 4, "ff_dim": 128, "grid_rows": 1},
            {"decoder": "lstm", "grid_rows": 2}, {"decoder": "lstm", "stem_stride": 2, "stages": 1}]


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"dim": 48, "base_channels": 8, "embed_dim": 16, "hidden": 32, "attn_dim": 24, "stages": 2}
    return build_sat(SATConfig(**{**small, **kw}), 3, V).eval()


def images(widths=(40, 24), height=20) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one height padded on the right, as ImageFormat.collate pads text lines."""
    torch.manual_seed(1)
    W = max(widths)
    x = torch.zeros(len(widths), 3, height, W)
    mask = torch.zeros(len(widths), height, W, dtype=torch.bool)
    for i, w in enumerate(widths):
        x[i, :, :, :w] = torch.randn(3, height, w)
        mask[i, :, :w] = True
    return x, mask


@pytest.mark.parametrize("kw", DECODERS)
def test_steps_equal_teacher_forcing(kw):
    m = model(**kw)
    x, mask = images()
    tgt = torch.randint(4, V, (2, 6))
    tgt[:, 0] = 1
    full = m(x, mask, tgt)  # (B, T, V)
    memory, state, steps = m.encode(x, mask), None, []
    for t in range(tgt.size(1)):
        logits, state = m.decode_step(tgt[:, t], memory, state)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("kw", DECODERS)
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_an_image_decodes_the_same_alone_and_in_a_padded_batch(kw, strategy):
    m = model(**kw)
    x, mask = images((40, 24, 33))
    cfg = DecodeConfig(strategy=strategy, beam_size=3, max_len_a=0, max_len_b=8, return_attention=True)
    together = decode(m, x, mask, cfg)
    for i, w in enumerate((40, 24, 33)):
        (alone,) = decode(m, x[i:i + 1, :, :, :w], mask[i:i + 1, :, :w], cfg)
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert alone[0].score == pytest.approx(together[i][0].score, abs=1e-4)
        assert alone[0].attention.shape == together[i][0].attention.shape  # cut to the image's own cells
        assert torch.allclose(alone[0].attention, together[i][0].attention, atol=1e-5)


@pytest.mark.parametrize("kw", DECODERS)
def test_beam_of_one_is_greedy(kw):
    m = model(**kw)
    x, mask = images()
    greedy = decode(m, x, mask, DecodeConfig(max_len_a=0, max_len_b=8))
    beam = decode(m, x, mask, DecodeConfig(strategy="beam", beam_size=1, length_penalty=0, max_len_a=0, max_len_b=8))
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]


@pytest.mark.parametrize("kw", DECODERS)
def test_rows_share_memory_in_groups(kw):
    m = model(**kw)
    x, mask = images()
    _, _, steps = grouped_and_repeated_steps(m, x, mask)
    for a, b, _, _ in steps:
        assert torch.allclose(a, b, atol=1e-5)


def test_attention_over_the_grid_sums_to_one_and_reads_as_a_map():
    m = model()
    x, mask = images((40, 24), height=20)
    (h0,), (h1,) = decode(m, x, mask, DecodeConfig(max_len_a=0, max_len_b=5, return_attention=True))
    for h, w in ((h0, 40), (h1, 24)):
        cells = grid_shape(20, w, h.attention.size(-1))
        assert cells == (5, w // 4)  # two stride-2 stages: 4 x 4 pixel cells
        assert torch.allclose(h.attention.sum(-1), torch.ones(h.attention.size(0)), atol=1e-5)


def test_cells_run_column_by_column_so_padding_comes_last():
    enc = ImageEncoder(3, 8, stages=1, base_channels=4, positions=False).eval()
    x, mask = images((8, 4), height=4)
    _, m = enc(x, mask)  # grid 2 x 4 and 2 x 2
    assert m[0].tolist() == [True] * 8
    assert m[1].tolist() == [True] * 4 + [False] * 4


class FixedAttention(torch.nn.Module):
    """Attention weights set by hand, one row per step: cell 0, cell 0, then uniform over the 8 cells."""

    def __init__(self):
        super().__init__()
        self.rows = [torch.eye(8)[0], torch.eye(8)[0], torch.full((8,), 1 / 8), torch.eye(8)[7], torch.eye(8)[7]]
        self.t = 0

    def project_keys(self, keys):
        return keys

    def forward(self, query, keys, values, mask):
        w = self.rows[self.t].expand(query.size(0), 8)
        self.t += 1
        return torch.bmm(w[:, None], values)[:, 0], w


def test_doubly_stochastic_term_on_a_hand_built_case():
    m = model(attention_reg=0.5).train()
    m.attention = FixedAttention()
    x, mask = images((16,), height=8)  # two stride-2 stages: 2 x 4 = 8 cells
    tgt = torch.tensor([[1, 5, 6, 0, 0]])  # bos + 2 tokens, then padding: the last 2 steps do not count
    m(x, mask, tgt, features=True)
    # sum over t of alpha: cell 0 gets 1 + 1 + 1/8, the others 1/8 each
    expected = 0.5 * ((1 - 2.125) ** 2 + 7 * (1 - 0.125) ** 2)
    assert float(m.auxiliary_loss().detach()) == pytest.approx(expected, rel=1e-6)
    assert m.auxiliary_loss() is None  # taken once


def test_no_term_in_eval_or_when_off():
    x, mask = images((16,), height=8)
    tgt = torch.tensor([[1, 5, 6]])
    m = model()
    m(x, mask, tgt)
    assert m.auxiliary_loss() is None
    m = model(attention_reg=0.0).train()
    m(x, mask, tgt)
    assert m.auxiliary_loss() is None


def test_grid_rows_average_columns():
    m = model(grid_rows=1)
    x, mask = images((40, 24), height=20)
    memory = m.encode(x, mask)
    assert memory["mask"].sum(1).tolist() == [10, 6]  # one row of 4-pixel-wide columns
    (h,), (h2,) = decode(m, x, mask, DecodeConfig(max_len_a=0, max_len_b=3, return_attention=True))
    assert grid_shape(20, 40, h.attention.size(-1)) == (1, 10) and grid_shape(20, 24, h2.attention.size(-1)) == (1, 6)


def test_bad_options():
    with pytest.raises(ValueError, match="decoder"):
        SATConfig(decoder="gru")
    with pytest.raises(ValueError, match="heads"):
        SATConfig(decoder="transformer", dim=50, heads=4)
    with pytest.raises(ValueError, match="attention_reg"):
        SATConfig(attention_reg=-1)
