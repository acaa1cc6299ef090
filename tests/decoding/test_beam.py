import itertools
import math
import random

import pytest
import torch

from crossway.data.batching import pad
from crossway.data.tokenizers import BOS_ID, EOS_ID
from crossway.decoding import (
    DecodeConfig,
    beam_search,
    coverage_penalty,
    decode,
    greedy_search,
    length_penalty,
    no_repeat_ngram,
)
from crossway.errors import ConfigError
from crossway.models import (
    DecoderOnlyConfig,
    RNNConfig,
    TransformerConfig,
    build_decoder_only,
    build_rnn,
    build_transformer,
)
from tests.decoding.scripted import ScriptedModel


def models():
    torch.manual_seed(0)
    yield build_rnn(RNNConfig(attention="bahdanau", emb_dim=16, hidden=16, dropout=0.0), 20, 10).eval()
    torch.manual_seed(0)
    yield build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=2,
                                              dropout=0.0), 20, 10).eval()
    for prefix_lm in (False, True):
        torch.manual_seed(0)
        yield build_decoder_only(DecoderOnlyConfig(d_model=16, heads=2, ff_dim=32, layers=2, dropout=0.0,
                                                   prefix_lm=prefix_lm), 20, 10).eval()


def sentences(n=20):
    rng = random.Random(0)
    return [[rng.randint(4, 19) for _ in range(rng.randint(1, 9))] for _ in range(n)]


def test_beam_size_one_equals_greedy():
    for model in models():
        src = pad(sentences())
        greedy = greedy_search(model, src, src != 0, DecodeConfig(max_len_b=8))
        beam = beam_search(model, src, src != 0, DecodeConfig(strategy="beam", beam_size=1, max_len_b=8,
                                                               length_penalty=0.0))
        for g, (b,) in zip(greedy, beam, strict=True):
            assert g.tokens == b.tokens and g.finished == b.finished
            assert g.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_padding_invariance(strategy):
    cfg = DecodeConfig(strategy=strategy, beam_size=4, max_len_b=8)
    for model in models():
        sents = sentences()
        src = pad(sents)
        batched = decode(model, src, src != 0, cfg)
        for s, hyps in zip(sents, batched, strict=True):
            alone = decode(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool), cfg)[0]
            assert [h.tokens for h in alone] == [h.tokens for h in hyps]


def exhaustive_best(model, src, max_len):
    """Score every output of up to max_len - 1 tokens (then eos) with teacher forcing; return the best."""
    best = (-math.inf, None)
    mask = torch.ones_like(src, dtype=torch.bool)
    with torch.no_grad():
        for n in range(max_len):
            for seq in itertools.product([3, 4, 5], repeat=n):
                tgt = torch.tensor([[BOS_ID, *seq]])
                logp = torch.log_softmax(model(src, mask, tgt), -1)[0]
                score = sum(float(logp[i, tok]) for i, tok in enumerate([*seq, EOS_ID]))
                best = max(best, (score, list(seq)), key=lambda x: x[0])
    return best


def test_large_beam_finds_the_exhaustive_best():
    """Vocabulary of 6 (3 producible tokens + eos), at most 4 steps: a beam of 128 keeps every candidate."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1,
                                                    dropout=0.0), 8, 6).eval()
        src = torch.tensor([[4, 5, 6]])
        score, tokens = exhaustive_best(model, src, 4)
        cfg = DecodeConfig(strategy="beam", beam_size=128, n_best=1, max_len_a=0.0, max_len_b=4,
                           length_penalty=0.0, early_stopping=False)
        (hyp,) = beam_search(model, src, torch.ones_like(src, dtype=torch.bool), cfg)[0]
        assert hyp.finished and hyp.tokens == tokens
        assert hyp.score == pytest.approx(score, abs=1e-4)


def test_length_penalty_changes_the_ranking_as_the_formula_says():
    """A: [4] + eos with log-prob -1.0 (length 2); B: [5]*5 + eos with log-prob -1.5 (length 6)."""
    table = {(): {4: math.exp(-1.0), 5: math.exp(-1.5), EOS_ID: 1 - math.exp(-1.0) - math.exp(-1.5)},
             (4,): {EOS_ID: 1.0}, **{(5,) * n: {5: 1.0} for n in range(1, 5)}, (5,) * 5: {EOS_ID: 1.0}}
    model, src = ScriptedModel(table), torch.tensor([[4]])
    mask = torch.ones_like(src, dtype=torch.bool)
    base = dict(strategy="beam", beam_size=2, n_best=2, min_len=1, max_len_b=10, early_stopping=False)
    raw = beam_search(model, src, mask, DecodeConfig(**base, length_penalty=0.0))[0]
    assert [h.tokens for h in raw] == [[4], [5] * 5]
    gnmt = beam_search(model, src, mask, DecodeConfig(**base, length_penalty=1.0))[0]
    assert [h.tokens for h in gnmt] == [[5] * 5, [4]]
    assert gnmt[0].normalized == pytest.approx(-1.5 / (11 / 6)) and gnmt[1].normalized == pytest.approx(-1.0 / (7 / 6))
    assert length_penalty(6, 1.0) == pytest.approx(11 / 6)


def test_min_len_and_no_repeat_ngram():
    table = {(): {EOS_ID: 0.6, 4: 0.4}, (4,): {4: 0.7, 5: 0.3}, (4, 4): {4: 0.9, EOS_ID: 0.1},
             (4, 5): {EOS_ID: 1.0}, (4, 4, 4): {EOS_ID: 1.0}}
    model, src = ScriptedModel(table), torch.tensor([[4]])
    mask = torch.ones_like(src, dtype=torch.bool)
    assert greedy_search(model, src, mask, DecodeConfig())[0].tokens == []
    assert greedy_search(model, src, mask, DecodeConfig(min_len=1))[0].tokens == [4, 4, 4]
    blocked = greedy_search(model, src, mask, DecodeConfig(min_len=1), [no_repeat_ngram(1)])[0]
    assert blocked.tokens == [4, 5]


def test_n_best_is_sorted_and_distinct():
    model = next(models())
    src = pad(sentences(5))
    for hyps in decode(model, src, src != 0, DecodeConfig(strategy="beam", beam_size=5, n_best=5, max_len_b=6)):
        assert len(hyps) == 5
        assert len({tuple(h.tokens) for h in hyps}) == 5
        norm = [h.normalized for h in hyps if h.finished]
        assert norm == sorted(norm, reverse=True)


def test_hf_rules_rank_cut_hypotheses_and_force_eos():
    """Hugging Face generate()'s beam rules: at the length limit the K best candidates finish whether or not they
    end in eos and rank by logp / |Y| ** alpha alone; force_eos makes the last allowed token eos."""
    table = {(): {4: 0.9, EOS_ID: 0.06, 5: 0.04}, (4,): {4: 1.0}, (4, 4): {4: 1.0}, (5,): {EOS_ID: 1.0}}
    model, src = ScriptedModel(table), torch.tensor([[4]])
    mask = torch.ones_like(src, dtype=torch.bool)
    base = dict(strategy="beam", beam_size=2, max_len_a=0.0, max_len_b=3, early_stopping=False)
    (ours,) = beam_search(model, src, mask, DecodeConfig(**base))[0]
    assert ours.finished and ours.tokens in ([], [5])  # crossway: a hypothesis that reached eos comes first
    (hf,) = beam_search(model, src, mask, DecodeConfig(**base, beam_rules="hf"))[0]
    assert hf.tokens == [4, 4, 4] and not hf.finished
    assert hf.normalized == pytest.approx(math.log(0.9) / 3)
    (forced,) = beam_search(model, src, mask, DecodeConfig(**base, beam_rules="hf", force_eos=True))[0]
    assert forced.tokens == [4, 4] and forced.finished and forced.score == pytest.approx(math.log(0.9))
    greedy = greedy_search(model, src, mask, DecodeConfig(max_len_a=0.0, max_len_b=3, force_eos=True))[0]
    assert greedy.tokens == [4, 4] and greedy.finished
    assert length_penalty(6, 1.0, "hf") == 6 and length_penalty(6, 0.5, "hf") == pytest.approx(6 ** 0.5)


# --- coverage penalty (GNMT, Wu et al. 2016 eq. 14) -------------------------------------------------------------
# A: [4] + eos, log-prob -1.0, attention (0.5, 0.5) then (1, 0): coverage (1.5, 0.5), penalty beta * log 0.5.
# B: [5, 6] + eos, log-prob -1.5, attention (0.5, 0.5), (0, 1), (0.5, 0.5): coverage (1, 2), penalty 0.
COVERAGE_TABLE = {(): {4: math.exp(-1.0), 5: math.exp(-1.5), EOS_ID: 1 - math.exp(-1.0) - math.exp(-1.5)},
                  (4,): {EOS_ID: 1.0}, (5,): {6: 1.0}, (5, 6): {EOS_ID: 1.0}}
COVERAGE_ATTENTION = {(): [0.5, 0.5], (4,): [1.0, 0.0], (5,): [0.0, 1.0], (5, 6): [0.5, 0.5]}
COVERAGE_BEAM = dict(strategy="beam", beam_size=2, n_best=2, min_len=1, max_len_b=10, early_stopping=False)


@pytest.mark.parametrize("rules", ["crossway", "hf"])
@pytest.mark.parametrize("heads", [0, 2])
def test_coverage_penalty_changes_the_winner_as_the_formula_says(rules, heads):
    model = ScriptedModel(COVERAGE_TABLE, attention=COVERAGE_ATTENTION, heads=heads)
    src = torch.tensor([[4, 5]])
    mask = torch.ones_like(src, dtype=torch.bool)
    plain = beam_search(model, src, mask, DecodeConfig(**COVERAGE_BEAM, beam_rules=rules))[0]
    assert [h.tokens for h in plain] == [[4], [5, 6]]
    assert not any(model.asked)  # beta = 0: attention is never asked for
    covered = beam_search(model, src, mask, DecodeConfig(**COVERAGE_BEAM, beam_rules=rules, coverage_penalty=1.0))[0]
    assert [h.tokens for h in covered] == [[5, 6], [4]]
    assert covered[1].score == plain[0].score and covered[0].score == plain[1].score  # log-probs untouched
    lp_a, lp_b = length_penalty(2, 1.0, rules), length_penalty(3, 1.0, rules)
    assert covered[0].normalized == pytest.approx(-1.5 / lp_b)  # fully covered: no penalty
    assert covered[1].normalized == pytest.approx(-1.0 / lp_a + math.log(0.5))


def test_coverage_penalty_ignores_padding():
    """The sentence of two tokens scores the same alone and padded beside a longer one (padding is never
    counted as uncovered); the longer one, whose third token gets no attention, is penalised at the floor."""
    model = ScriptedModel(COVERAGE_TABLE, attention=COVERAGE_ATTENTION)
    src = torch.tensor([[4, 5, 0], [4, 5, 6]])
    cfg = DecodeConfig(**COVERAGE_BEAM, coverage_penalty=1.0)
    alone = beam_search(model, src[:1, :2], src[:1, :2] != 0, cfg)[0]
    short, long = beam_search(model, src, src != 0, cfg)
    assert [(h.tokens, h.normalized) for h in short] == [(h.tokens, h.normalized) for h in alone]
    assert long[0].tokens == [5, 6]
    assert long[0].normalized == pytest.approx(-1.5 / length_penalty(3, 1.0) + math.log(1e-10))


@pytest.mark.parametrize("rules", ["crossway", "hf"])
def test_coverage_penalty_ranks_hypotheses_cut_at_the_length_limit(rules):
    """No hypothesis reaches eos within 2 tokens: [4, 4] (log 0.6, coverage (1.5, 0.5)) and [5, 5] (log 0.4,
    coverage (1, 1)) are cut at the limit and ranked with the penalty (crossway: they fill the n-best list)."""
    table = {(): {4: 0.6, 5: 0.4}, (4,): {4: 1.0}, (5,): {5: 1.0}}
    attention = {(): [0.5, 0.5], (4,): [1.0, 0.0], (5,): [0.5, 0.5]}
    model, src = ScriptedModel(table, attention=attention), torch.tensor([[4, 5]])
    base = dict(strategy="beam", beam_size=2, n_best=2, max_len_a=0.0, max_len_b=2, length_penalty=0.0,
                early_stopping=False, beam_rules=rules)
    mask = torch.ones_like(src, dtype=torch.bool)
    plain = beam_search(model, src, mask, DecodeConfig(**base))[0]
    assert [h.tokens for h in plain] == [[4, 4], [5, 5]] and not any(h.finished for h in plain)
    covered = beam_search(model, src, mask, DecodeConfig(**base, coverage_penalty=2.0))[0]
    assert [h.tokens for h in covered] == [[5, 5], [4, 4]]
    assert covered[0].normalized == pytest.approx(math.log(0.4))
    assert covered[1].normalized == pytest.approx(math.log(0.6) + 2.0 * math.log(0.5))


def test_coverage_penalty_needs_attention():
    model, src = ScriptedModel(COVERAGE_TABLE), torch.tensor([[4, 5]])
    with pytest.raises(ConfigError, match="decode.coverage_penalty"):
        beam_search(model, src, src != 0, DecodeConfig(**COVERAGE_BEAM, coverage_penalty=0.5))
    with pytest.raises(ValueError, match="decode.coverage_penalty"):
        DecodeConfig(coverage_penalty=-0.1)
    # greedy search ignores it (beam only)
    assert greedy_search(model, src, src != 0, DecodeConfig(coverage_penalty=0.5))[0].tokens == []


class WithoutAttention(torch.nn.Module):
    """A model whose decode_step keeps no attention weights in its state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode(self, src, src_mask):
        return self.model.encode(src, src_mask)

    def decode_step(self, prev, memory, state, attention=False):
        logits, state = self.model.decode_step(prev, memory, state, attention)
        return logits, {k: v for k, v in state.items() if k != "attn"}


@pytest.mark.parametrize("rules", ["crossway", "hf"])
def test_coverage_penalty_follows_the_returned_attention(rules):
    """RNN (attention (B, S)) and Transformer ((B, layers, heads, S)): each hypothesis's normalized score is its
    length-penalised log-prob plus the penalty of its own attention rows (mean over layers and heads, summed over
    its steps, real source positions only), so the coverage was reordered with the beams; with beta = 0 the
    search never reads attention: it gives bit-identical results on a model that returns none."""
    src = pad(sentences(8))
    base = dict(strategy="beam", beam_size=4, n_best=3, max_len_b=6, beam_rules=rules)
    for model in models():
        cfg = DecodeConfig(**base, coverage_penalty=0.7, return_attention=True)
        for hyps, n in zip(beam_search(model, src, src != 0, cfg), (src != 0).sum(1).tolist(), strict=True):
            for h in hyps:
                attn = h.attention.flatten(1, -2).mean(1) if h.attention.dim() > 2 else h.attention  # (T, n)
                assert attn.size(-1) == n
                lp = length_penalty(len(h.tokens) + h.finished, cfg.length_penalty, rules)
                expected = h.score / lp + float(coverage_penalty(attn.sum(0), 0.7))
                assert h.normalized == pytest.approx(expected, abs=1e-5)
        plain = beam_search(model, src, src != 0, DecodeConfig(**base))
        blind = beam_search(WithoutAttention(model), src, src != 0, DecodeConfig(**base))
        assert [[(h.tokens, h.score, h.normalized) for h in hs] for hs in plain] == \
            [[(h.tokens, h.score, h.normalized) for h in hs] for hs in blind]
