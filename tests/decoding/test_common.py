import math

import pytest
import torch

from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from crossway.decoding import DecodeConfig, no_repeat_ngram
from crossway.decoding.common import coverage_penalty, mean_attention, step_log_probs, top_log_probs


def logits(rows=6, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 3
    x[:, PAD_ID] += 10  # the masked tokens would win if they were not masked
    x[:, BOS_ID] += 10
    return x


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("cfg,t", [(DecodeConfig(), 3), (DecodeConfig(min_len=5), 3),
                                   (DecodeConfig(force_eos=True), 3)])
def test_top_log_probs_equal_the_top_of_step_log_probs(k, cfg, t):
    x, tokens = logits(), torch.randint(4, 50, (6, t))
    last = torch.tensor([False, True, False, False, True, False])
    ref_values, ref_ids = step_log_probs(x.clone(), tokens, cfg, [], last).topk(k, dim=-1)
    values, ids = top_log_probs(x.clone(), tokens, cfg, [], k, last)
    assert values.shape == ids.shape == (6, k)
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=0)  # log-probs under the full softmax
    finite = ref_values.isfinite()
    assert torch.equal(ids[finite], ref_ids[finite])
    assert not ((ids == PAD_ID) | (ids == BOS_ID))[finite].any()
    if cfg.min_len > t:
        assert not (ids == EOS_ID).any()
    if cfg.force_eos:  # rows at their last step can only end, with log-probability 0
        assert (ids[last, 0] == EOS_ID).all() and (values[last, 0] == 0).all()
        assert (values[last, 1:] == float("-inf")).all()


def test_k1_is_the_argmax():
    x = logits(vocab=8)
    x[0, 5] = x[0, 6] = 100.0  # a tie: the first index wins, as argmax
    values, ids = top_log_probs(x.clone(), torch.empty(6, 0, dtype=torch.long), DecodeConfig(), [], 1)
    assert ids[0, 0] == 5
    ref = step_log_probs(x.clone(), torch.empty(6, 0, dtype=torch.long), DecodeConfig(), [])
    assert torch.equal(ids[:, 0], ref.argmax(-1))


def test_processors_take_the_full_path():
    x, tokens = logits(rows=1, vocab=10), torch.tensor([[4, 7, 4]])
    x[0, 7] = 50.0  # would repeat the bigram (4, 7)
    values, ids = top_log_probs(x.clone(), tokens, DecodeConfig(), [no_repeat_ngram(2)], 1)
    assert ids[0, 0] != 7 and values[0, 0].isfinite()


def test_coverage_penalty_on_a_hand_built_attention_matrix():
    """Two output tokens j over three source positions i: coverage sum_j p_ij = (1.2, 0.5, 0.3), so
    cp = beta * (log min(1.2, 1) + log 0.5 + log 0.3) = 0.5 * (0 - 0.693147 - 1.203973) = -0.948560."""
    p = torch.tensor([[0.7, 0.2, 0.1],  # (T, S): row j is output token j's attention
                      [0.5, 0.3, 0.2]])
    assert float(coverage_penalty(p.sum(0), 0.5)) == pytest.approx(-0.948560, abs=1e-6)
    covered = torch.tensor([[0.6, 0.5, 0.9], [0.4, 0.5, 0.1]]).sum(0)  # (1, 1, 1): nothing uncovered
    batch = coverage_penalty(torch.stack([p.sum(0), covered]), 0.5)  # (B, S) -> (B,)
    assert batch.shape == (2,) and batch[0] == pytest.approx(-0.948560, abs=1e-6) and batch[1] == 0
    assert float(coverage_penalty(p.sum(0), 0.0)) == 0
    assert float(coverage_penalty(torch.tensor([0.0, 1.0]), 1.0)) == pytest.approx(math.log(1e-10), rel=1e-6)


def test_mean_attention_averages_layers_and_heads():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(3, 2, 4, 5, generator=g)  # (B, layers, heads, S)
    assert torch.allclose(mean_attention(attn), attn.mean((1, 2)))
    assert torch.allclose(mean_attention(attn[:, 0]), attn[:, 0].mean(1))
    assert torch.equal(mean_attention(attn[:, 0, 0]), attn[:, 0, 0])


def _position_limited_models():
    """(name, model, the most tokens each row of test_search_stops_at_the_models_positions's batch can produce)."""
    from crossway.models import DecoderOnlyConfig, TransformerConfig, build_decoder_only, build_transformer
    from crossway.models.ensemble import Ensemble
    from crossway.models.prompted import Prompted
    torch.manual_seed(0)
    dec_only = build_decoder_only(DecoderOnlyConfig(d_model=16, heads=2, ff_dim=32, layers=1, dropout=0.0,
                                                    max_positions=9), 15, 13).eval()
    tf = build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1,
                                             dropout=0.0, max_positions=7), 15, 13).eval()
    return [("decoder-only", dec_only, [4, 6, 8]), ("transformer", tf, [7, 7, 7]),
            ("prompted", Prompted(tf, [5, 6]), [5, 5, 5]), ("ensemble", Ensemble([dec_only, tf]), [4, 6, 7])]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_search_stops_at_the_models_positions(strategy):
    """A model with a position table (the protocol's optional max_target_tokens) is decoded up to it and no
    further, whatever max_len_a/b allow: the output is returned unfinished instead of failing mid-search."""
    from crossway.decoding import decode
    src = torch.tensor([[5, 6, 7, 8, 9], [4, 5, 6, 0, 0], [7, 0, 0, 0, 0]])  # 5, 3 and 1 source tokens
    cfg = DecodeConfig(strategy=strategy, beam_size=3, max_len_a=0, max_len_b=60, min_len=60)  # eos banned
    for name, model, limits in _position_limited_models():
        hyps = [nbest[0] for nbest in decode(model, src, src != 0, cfg)]
        assert [len(h.tokens) for h in hyps] == limits, name
        assert not any(h.finished for h in hyps), name
