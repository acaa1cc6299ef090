"""The Whisper-style speech model: the conv stem's lengths and masks, and the protocol properties every sequence
model has (steps equal teacher forcing, batch invariance, beam 1 = greedy, grouped rows); the decoder prompt."""

from __future__ import annotations

import pytest
import torch

from crossway.decoding import DecodeConfig, decode
from crossway.models.prompted import Prompted
from crossway.models.speech import AudioStem, WhisperConfig, build_whisper
from tests.models.grouped import grouped_and_repeated_steps

V, F = 14, 12
VARIANTS = [{}, {"stem_stride": 4}, {"enc_layers": 0}]


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"dim": 32, "heads": 4, "ff_dim": 64, "enc_layers": 2, "dec_layers": 2}
    return build_whisper(WhisperConfig(**{**small, **kw}), F, V).eval()


def frames(lengths=(17, 9, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Features padded with zeros after each utterance, as AudioFormat.collate pads them."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(len(lengths), max(lengths), F)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, F, generator=g)
        mask[i, :n] = True
    return x, mask


@pytest.mark.parametrize(("stride", "expected"), [(2, [9, 5, 1, 1]), (4, [5, 3, 1, 1])])
def test_stem_lengths_and_masks(stride, expected):
    stem = AudioStem(F, 16, stride)
    x, mask = frames((17, 9, 1, 2))
    out, out_mask = stem(x, mask)
    assert out_mask.sum(1).tolist() == expected
    assert out.shape == (4, max(expected), 16)
    assert all(out_mask[i, :n].all() and not out_mask[i, n:].any() for i, n in enumerate(expected))


@pytest.mark.parametrize("kw", VARIANTS)
def test_an_utterance_encodes_the_same_alone_and_in_a_padded_batch(kw):
    m = model(**kw)
    x, mask = frames()
    batch = m.encode(x, mask)
    for i, n in enumerate((17, 9, 12)):
        alone = m.encode(x[i:i + 1, :n], mask[i:i + 1, :n])
        M = int(alone["mask"].sum())
        assert int(batch["mask"][i].sum()) == M
        for k in ("ck0", "cv1"):  # (B, H, M, Dh)
            assert torch.allclose(alone[k][0, :, :M], batch[k][i, :, :M], atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_steps_equal_teacher_forcing(kw):
    m = model(**kw)
    x, mask = frames()
    tgt = torch.randint(4, V, (3, 6))
    tgt[:, 0] = 1
    full = m(x, mask, tgt)
    memory, state, steps = m.encode(x, mask), None, []
    for t in range(tgt.size(1)):
        logits, state = m.decode_step(tgt[:, t], memory, state)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_an_utterance_decodes_the_same_alone_and_in_a_padded_batch(strategy):
    m = model()
    x, mask = frames()
    cfg = DecodeConfig(strategy=strategy, beam_size=3, max_len_a=0, max_len_b=8, return_attention=True)
    together = decode(m, x, mask, cfg)
    for i, n in enumerate((17, 9, 12)):
        (alone,) = decode(m, x[i:i + 1, :n], mask[i:i + 1, :n], cfg)
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        M = (n - 1) // 2 + 1
        assert alone[0].attention.shape[-1] == together[i][0].attention.shape[-1] == M


def test_beam_of_one_equals_greedy():
    m = model()
    x, mask = frames()
    greedy = decode(m, x, mask, DecodeConfig(max_len_a=0, max_len_b=8))
    beam = decode(m, x, mask, DecodeConfig(strategy="beam", beam_size=1, length_penalty=0, max_len_a=0, max_len_b=8))
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]


def test_grouped_rows_equal_repeated_memory():
    m = model()
    x, mask = frames()
    _, _, steps = grouped_and_repeated_steps(m, x, mask)
    for a, b, _, _ in steps:
        assert torch.allclose(a, b, atol=1e-5)


def test_the_prompt_is_read_not_produced():
    m = model()
    x, mask = frames()
    prompted = Prompted(m, [5, 6, 7])
    tgt = torch.randint(4, V, (3, 5))
    tgt[:, 0] = 1
    full = torch.cat([tgt[:, :1], torch.tensor([5, 6, 7]).expand(3, 3), tgt[:, 1:]], 1)
    assert torch.allclose(prompted(x, mask, tgt), m(x, mask, full)[:, 3:], atol=1e-6)
    memory, state, steps = prompted.encode(x, mask), None, []
    for t in range(tgt.size(1)):
        logits, state = prompted.decode_step(tgt[:, t], memory, state)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), prompted(x, mask, tgt), atol=1e-5)
    # search through the wrapper: the outputs follow the prompt, which is not among them
    (hyp,), = decode(prompted, x[:1], mask[:1], DecodeConfig(max_len_a=0, max_len_b=6))
    out = torch.tensor(hyp.tokens + [2] * hyp.finished)  # the outputs, eos included when produced
    with torch.no_grad():
        logp = m(x[:1], mask[:1], torch.tensor([[1, 5, 6, 7, *hyp.tokens]])).log_softmax(-1)[0, 3:]
    assert abs(float(logp[: out.numel()].gather(1, out[:, None]).sum()) - hyp.score) < 1e-4


def test_config_errors():
    with pytest.raises(ValueError, match="stem_stride"):
        WhisperConfig(stem_stride=3)
    with pytest.raises(ValueError, match="divisible"):
        WhisperConfig(dim=30, heads=4)
