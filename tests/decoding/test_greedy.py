import random

import pytest
import torch

from crossway.data.batching import pad
from crossway.data.tokenizers import EOS_ID
from crossway.decoding import DecodeConfig, greedy_search
from crossway.models import RNNConfig, build_rnn


def model(attention):
    torch.manual_seed(0)
    return build_rnn(RNNConfig(attention=attention, emb_dim=16, hidden=24, dropout=0.0), 20, 12).eval()


def sentences(n=30):
    rng = random.Random(0)
    return [[rng.randint(4, 19) for _ in range(rng.randint(1, 12))] for _ in range(n)]


@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong_dot"])
def test_output_is_identical_alone_and_in_a_padded_batch(attention):
    m, cfg = model(attention), DecodeConfig(max_len_a=1.0, max_len_b=5)
    sents = sentences()
    src = pad(sents)
    batched = greedy_search(m, src, src != 0, cfg)
    for s, hyp in zip(sents, batched, strict=True):
        alone = greedy_search(m, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool), cfg)[0]
        assert alone.tokens == hyp.tokens and alone.finished == hyp.finished
        assert alone.score == pytest.approx(hyp.score, abs=1e-4)


def test_greedy_picks_the_argmax_of_each_step():
    m, cfg = model("bahdanau"), DecodeConfig(max_len_a=0.0, max_len_b=6)
    src = torch.tensor([[5, 6, 7]])
    hyp = greedy_search(m, src, src != 0, cfg)[0]
    memory, state, prev, score = m.encode(src, src != 0), None, torch.tensor([1]), 0.0
    for tok in [*hyp.tokens, EOS_ID][:6]:
        logits, state = m.decode_step(prev, memory, state)
        logp = torch.log_softmax(logits.detach(), -1)
        logp[:, :2] = float("-inf")  # pad and bos are never produced
        assert int(logp.argmax()) == tok
        score += float(logp[0, tok])
        prev = torch.tensor([tok])
    assert hyp.score == pytest.approx(score, abs=1e-5)


def test_length_limit_and_attention_rows():
    m = model("luong_general")
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    hyps = greedy_search(m, src, src != 0, DecodeConfig(max_len_a=0.0, max_len_b=3, return_attention=True))
    for h, n in zip(hyps, [4, 2], strict=True):
        steps = len(h.tokens) + h.finished
        assert steps <= 3 and (h.finished or len(h.tokens) == 3)
        assert h.attention.shape == (steps, n)  # (T, S) over the sentence's own tokens, not the batch's padding
        assert torch.allclose(h.attention.sum(-1), torch.ones(steps))


def test_max_length_scales_with_the_source():
    """A model that never says eos stops at a * source length + b tokens."""
    from tests.decoding.scripted import ScriptedModel

    never_ends = ScriptedModel({(4,) * n: {4: 1.0} for n in range(40)})
    src = torch.tensor([[5, 6, 7, 8, 9, 9], [5, 6, 0, 0, 0, 0]])
    hyps = greedy_search(never_ends, src, src != 0, DecodeConfig(max_len_a=1.5, max_len_b=2))
    assert [len(h.tokens) for h in hyps] == [11, 5] and not any(h.finished for h in hyps)
