"""Listen, Attend and Spell: the pyramid's lengths and masks, batch invariance, the protocol properties the text
models have, and a tiny speech-like task learnt."""

from __future__ import annotations

import pytest
import torch

from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from crossway.decoding import DecodeConfig, decode
from crossway.models import Seq2Seq
from crossway.models.las import LASConfig, PyramidalEncoder, build_las, stack_frames
from tests.models.grouped import grouped_and_repeated_steps

F, V = 6, 13
LENGTHS = (17, 9, 1)
VARIANTS = [{}, {"cell": "gru", "attention": "bahdanau"}, {"attention": "luong_dot", "frame_stack": 2, "pyramid": 1},
            {"bottom_layers": 0, "dec_layers": 2}, {"bottom_layers": 2, "pyramid": 1, "dec_layers": 3}]


pytestmark = pytest.mark.usefixtures("one_thread")


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"hidden": 8, "emb_dim": 8, "pyramid": 2, "bottom_layers": 1, "dec_layers": 1, "dropout": 0.0}
    return build_las(LASConfig(**{**small, **kw}), F, V).eval()


def frames(lengths=LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames padded on the right with zeros, as the audio collate pads them."""
    torch.manual_seed(1)
    x = torch.zeros(len(lengths), max(lengths), F)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, F)
        mask[i, :n] = True
    return x, mask


def targets(B: int = 3, T: int = 5) -> torch.Tensor:
    torch.manual_seed(2)
    tgt = torch.randint(4, V, (B, T))
    tgt[:, 0] = BOS_ID
    tgt[-1, 3:] = PAD_ID
    return tgt


def test_pyramid_halves_each_rows_own_length_rounding_up():
    m = model(pyramid=2)
    x, mask = frames()
    memory = m.encode(x, mask)
    assert memory["mask"].shape == (3, 5)  # 17 -> 9 -> 5 positions
    assert memory["mask"].sum(1).tolist() == [5, 3, 1]  # ceil(ceil(L / 2) / 2): 17 -> 5, 9 -> 3, 1 -> 1
    assert torch.equal(memory["mask"], torch.arange(5) < torch.tensor([[5], [3], [1]]))  # real positions first
    assert memory["enc"].shape == (3, 5, 16) and memory["h0"].shape == memory["c0"].shape == (3, 1, 16)
    m = model(pyramid=1, frame_stack=3)
    assert m.encode(x, mask)["mask"].sum(1).tolist() == [3, 2, 1]  # ceil(ceil(L / 3) / 2)


def test_stack_frames_keeps_an_odd_tail_zero_padded():
    x = torch.arange(1, 6, dtype=torch.float)[None, :, None]  # (1, 5, 1)
    y, n = stack_frames(x, torch.tensor([5]), 2)
    assert y[0].tolist() == [[1, 2], [3, 4], [5, 0]] and n.tolist() == [3]


@pytest.mark.parametrize("kw", VARIANTS)
def test_an_utterance_encodes_the_same_alone_and_in_a_padded_batch(kw):
    m = model(**kw)
    x, mask = frames()
    batch = m.encode(x, mask)
    for i, n in enumerate(LENGTHS):
        alone = m.encode(x[i:i + 1, :n], mask[i:i + 1, :n])
        M = int(alone["mask"].sum())
        assert alone["mask"].all() and int(batch["mask"][i].sum()) == M
        assert not batch["enc"][i, M:].any()  # padding positions are zero (and masked)
        for k in alone:
            a, b = alone[k][0], batch[k][i]
            if k in ("enc", "keys", "mask"):  # memory positions: the real ones only
                a, b = a[:M], b[:M]
            assert a.shape == b.shape and (a.float() - b.float()).abs().max() <= 1e-5, k


@pytest.mark.parametrize("kw", VARIANTS)
def test_steps_equal_teacher_forcing(kw):
    m = model(**kw)
    assert isinstance(m, Seq2Seq)
    x, mask = frames()
    tgt = targets()
    full = m(x, mask, tgt)  # (B, T, V)
    memory, state, steps = m.encode(x, mask), None, []
    for t in range(tgt.size(1)):
        logits, state = m.decode_step(tgt[:, t], memory, state)
        assert state["attn"].shape == memory["mask"].shape  # (B, M)
        assert not state["attn"][2, 1:].any()  # the 1-frame utterance has one memory position
        steps.append(logits)
    assert full.shape == (3, 5, V)
    assert (torch.stack(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", VARIANTS[:3])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_decodes_the_same_alone_and_in_a_padded_batch(kw, strategy):
    m = model(**kw)
    x, mask = frames()
    cfg = DecodeConfig(strategy=strategy, beam_size=3, max_len_a=0, max_len_b=6, return_attention=True)
    together = decode(m, x, mask, cfg)
    for i, n in enumerate(LENGTHS):
        (alone,) = decode(m, x[i:i + 1, :n], mask[i:i + 1, :n], cfg)
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert alone[0].score == pytest.approx(together[i][0].score, abs=1e-4)
        assert alone[0].attention.shape == together[i][0].attention.shape  # cut to the row's own positions


@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_beam_of_one_is_greedy(kw):
    m = model(**kw)
    x, mask = frames()
    greedy = decode(m, x, mask, DecodeConfig(max_len_a=0, max_len_b=8))
    beam = decode(m, x, mask, DecodeConfig(strategy="beam", beam_size=1, length_penalty=0, max_len_a=0, max_len_b=8))
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]
    assert [g[0].score for g in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-5)


def test_rows_share_memory_in_groups():
    x, mask = frames()
    for a, b, _, _ in grouped_and_repeated_steps(model(), x, mask)[2]:
        assert (a - b).abs().max() <= 1e-6


def test_speller_starts_from_the_top_listener_layers():
    m = model(bottom_layers=2, pyramid=1, dec_layers=2)
    x, mask = frames()
    _, h, c, _ = m.encoder(x, mask)  # (B, 3, 16): bottom, bottom, pyramid
    memory = m.encode(x, mask)
    assert h.shape == (3, 3, 16) and torch.equal(memory["h0"], h[:, 1:]) and torch.equal(memory["c0"], c[:, 1:])


def utterances(n: int, gen: torch.Generator, protos: torch.Tensor) -> tuple:
    """Each word (token 4 + w) is its own frame pattern held 3-6 frames, plus noise; 1-3 words an utterance, no
    word twice in a row (two would sound as one long one)."""
    xs, ys = [], []
    for _ in range(n):
        W, k = len(protos), int(torch.randint(1, 4, (1,), generator=gen))
        words = torch.randint(1, W, (k,), generator=gen)  # steps of 1 .. W - 1 from a random first word
        words[0] = torch.randint(0, W, (1,), generator=gen)
        words = words.cumsum(0) % W
        seg = torch.cat([protos[w].expand(int(torch.randint(3, 7, (1,), generator=gen)), F) for w in words.tolist()])
        xs.append(seg + 0.3 * torch.randn(seg.shape, generator=gen))
        ys.append((words + 4).tolist())
    T = max(len(s) for s in xs)
    x, mask = torch.zeros(n, T, F), torch.zeros(n, T, dtype=torch.bool)
    for i, s in enumerate(xs):
        x[i, :len(s)], mask[i, :len(s)] = s, True
    return x, mask, ys


def test_learns_a_tiny_word_recognition_task():
    gen = torch.Generator().manual_seed(0)
    protos = 2 * torch.randn(4, F, generator=gen)  # 4 words
    m = model(hidden=16, emb_dim=16).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        x, mask, ys = utterances(32, gen, protos)
        T = max(map(len, ys)) + 1
        tgt_in = torch.tensor([[BOS_ID] + y + [PAD_ID] * (T - 1 - len(y)) for y in ys])
        tgt_out = torch.tensor([y + [EOS_ID] + [PAD_ID] * (T - 1 - len(y)) for y in ys])
        loss = torch.nn.functional.cross_entropy(m(x, mask, tgt_in).flatten(0, 1), tgt_out.flatten(),
                                                 ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:20]) / 20
    x, mask, ys = utterances(50, gen, protos)
    hyps = decode(m.eval(), x, mask, DecodeConfig(max_len_a=0, max_len_b=6))
    assert sum(h[0].tokens == y for h, y in zip(hyps, ys, strict=True)) >= 45


def test_bad_options():
    with pytest.raises(ValueError, match="attention"):
        LASConfig(attention="none")
    with pytest.raises(ValueError, match="cell"):
        LASConfig(cell="rnn")
    with pytest.raises(ValueError, match="dec_layers"):
        LASConfig(bottom_layers=0, pyramid=1, dec_layers=2)
    with pytest.raises(ValueError, match="pyramid"):
        LASConfig(pyramid=-1)
    with pytest.raises(ValueError, match="frame_stack"):
        LASConfig(frame_stack=0)
    with pytest.raises(ValueError, match="dropout"):
        LASConfig(dropout=1.0)


def test_gru_listener_without_bottom_layers():
    enc = PyramidalEncoder(F, 4, bottom_layers=0, pyramid=1, cell="gru", dropout=0.0)  # pairs of raw frames first
    x, mask = frames()
    out, h, c, m = enc(x, mask)
    assert out.shape == (3, 9, 8) and h.shape == (3, 1, 8) and c is None and m.sum(1).tolist() == [9, 5, 1]
