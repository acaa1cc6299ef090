"""Reranking an n-best list with a second model, and right-to-left targets (data.tgt_reverse)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from crossway.config import RunConfig
from crossway.data.tokenizers import TextCodec, Vocab, make_tokenizer
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError
from crossway.inference import Translation, translate
from crossway.rerank import check_rerank, choose, edit_distances, picks, rerank
from crossway.training.checkpoint import LoadedModel
from tests.decoding.scripted import ScriptedModel

# ids 4, 5, 6 are the tokens A, B, C
SRC = TextCodec(make_tokenizer("char"), Vocab(["x"]))
TGT = TextCodec(make_tokenizer("word"), Vocab(["A", "B", "C"]))
BEAM = DecodeConfig(strategy="beam", beam_size=2, n_best=2, max_len_b=4, length_penalty=0.0)


def loaded(model, tgt=TGT) -> LoadedModel:
    return LoadedModel(model, RunConfig(), SRC, tgt, None)


def main_model():  # prefers "A" (0.6) over "B" (0.4)
    return ScriptedModel({(): {4: 0.6, 5: 0.4}})


def test_rescorer_can_overturn_the_searching_model():
    outs = translate(main_model(), SRC, TGT, ["x"], BEAM)
    assert [o.text for o in [outs[0], *outs[0].alternatives]] == ["A", "B"]
    fan_of_b = ScriptedModel({(): {4: 0.1, 5: 0.9}})
    best = rerank(outs, ["x"], [loaded(fan_of_b)])[0]
    assert best.text == "B" and best.alternatives[0].text == "A"
    assert best.score == pytest.approx(math.log(0.4) + math.log(0.9), abs=1e-5)  # each adds its eos: log 1
    same = rerank(outs, ["x"], [loaded(fan_of_b)], weights=[1.0, 0.0])[0]
    assert same.text == "A"  # the rescorer weighed 0 keeps the beam's order
    # 10 ln .6 + ln .1 > 10 ln .4 + ln .9
    assert rerank(outs, ["x"], [loaded(fan_of_b)], weights=[10.0, 1.0])[0].text == "A"
    with pytest.raises(ConfigError, match="2 weights for 3 models"):
        rerank(outs, ["x"], [loaded(fan_of_b)] * 2, weights=[1.0, 1.0])


def test_translate_reranks_and_needs_an_nbest_list():
    fan_of_b = loaded(ScriptedModel({(): {4: 0.1, 5: 0.9}}))
    assert translate(main_model(), SRC, TGT, ["x"], BEAM, rescorers=[fan_of_b])[0].text == "B"
    check_rerank(BEAM, [fan_of_b])
    for cfg in (DecodeConfig(), DecodeConfig(strategy="beam", n_best=1)):
        with pytest.raises(ConfigError, match="n-best list"):
            translate(main_model(), SRC, TGT, ["x"], cfg, rescorers=[fan_of_b])


def test_union_of_nbest_lists_scored_by_every_model():
    main = ScriptedModel({(): {4: 0.5, 5: 0.3, 6: 0.2}})  # its 2-best: A, B
    fan_of_c = loaded(ScriptedModel({(): {4: 0.05, 5: 0.05, 6: 0.9}}))  # its 2-best: C and A or B
    assert translate(main, SRC, TGT, ["x"], BEAM, rescorers=[fan_of_c])[0].text == "A"  # C is not in A, B
    union = dataclasses.replace(BEAM, rescore_union=True)
    best = translate(main, SRC, TGT, ["x", ""], union, rescorers=[fan_of_c])
    assert best[0].text == "C" and best[1].text == ""  # the empty input stays empty
    assert best[0].score == pytest.approx(math.log(0.2) + math.log(0.9), abs=1e-5)  # forced by both models
    assert [a.text for a in best[0].alternatives] == ["A", "B"]  # each text once, ln .5 + ln .05 > ln .3 + ln .05
    outs = translate(main, SRC, TGT, ["x"], BEAM)
    with pytest.raises(ConfigError, match="need the searching model"):
        rerank(outs, ["x"], [fan_of_c], pools=[outs])


def test_minimum_bayes_risk_picks_the_consensus():
    def cand(text, p):
        return Translation(text, text.split(), ["x"], math.log(p), True), [math.log(p)]
    scored = [[cand("X Y Z", 0.4), cand("A B C", 0.31), cand("A B D", 0.29)]]
    outs = [scored[0][0][0]]
    assert choose(outs, scored, [1.0], 0.0)[0].text == "X Y Z"  # the most probable
    # expected edits: X Y Z .31*3 + .29*3 = 1.8; A B C .4*3 + .29 = 1.49; A B D .4*3 + .31 = 1.51
    best = choose(outs, scored, [1.0], 0.0, mbr=1.0)[0]
    assert best.text == "A B C" and [a.text for a in best.alternatives] == ["A B D", "X Y Z"]
    assert best.score == pytest.approx(math.log(0.31))
    assert choose(outs, scored, [1.0], 0.0, mbr=0.01)[0].text == "X Y Z"  # a cold posterior: the best score
    assert choose(outs, [[]], [1.0], 0.0, mbr=1.0) == outs  # nothing to choose from: as it was
    # picks (the benchmark's grid) chooses as choose does, with distances computed once or on the fly
    dists = edit_distances(scored + [[]])
    assert dists[0] == [[0, 3, 3], [3, 0, 1], [3, 1, 0]] and dists[1] == []
    assert picks(scored + [[]], [1.0], 0.0, 1.0, dists) == [1, None]
    assert picks(scored, [1.0], 0.0, 1.0) == [1] and picks(scored, [1.0], 0.0) == [0]


def test_translate_passes_the_mbr_temperature():
    # C C .4, A B .6 * .51 = .306, A C .294: A C is one edit from both others, so it has the least risk
    main = ScriptedModel({(): {6: 0.4, 4: 0.6}, (6,): {6: 1.0}, (4,): {5: 0.51, 6: 0.49}})
    neutral = loaded(ScriptedModel({}))  # weighed 0
    cfg = DecodeConfig(strategy="beam", beam_size=3, n_best=3, max_len_b=4, length_penalty=0.0)
    texts = [translate(main, SRC, TGT, ["x"], dataclasses.replace(cfg, rescore_mbr=t), rescorers=[neutral],
                       weights=[1.0, 0.0])[0].text for t in (0.0, 1.0)]
    assert texts == ["C C", "A C"]
    with pytest.raises(ValueError, match="rescore_mbr"):
        DecodeConfig(rescore_mbr=-1.0)


def test_right_to_left_codec_and_outputs():
    r2l = TextCodec(TGT.tokenizer, TGT.vocab, reverse=True)
    assert r2l.encode("A B C") == [6, 5, 4] and r2l.decode([6, 5, 4, 2]) == "A B C"
    assert TextCodec.from_dict(r2l.to_dict()).reverse and "reverse" not in TGT.to_dict()
    model = ScriptedModel({(): {6: 1.0}, (6,): {4: 1.0}})  # produces C then A: right to left, "A C"
    out = translate(model, SRC, r2l, ["x"], DecodeConfig(return_attention=False))[0]
    assert out.text == "A C" and out.tokens == ["A", "C"]
    # a right-to-left rescorer reads the candidate from its end: it scores "A C" as ids C, A
    outs = translate(ScriptedModel({(): {4: 0.5, 6: 0.5}, (4,): {6: 1.0}, (6,): {4: 1.0}}), SRC, TGT, ["x"], BEAM)
    assert sorted(o.text for o in [outs[0], *outs[0].alternatives]) == ["A C", "C A"]
    best = rerank(outs, ["x"], [loaded(model, r2l)])[0]
    assert best.text == "A C" and best.score == pytest.approx(math.log(0.5), abs=1e-5)
    assert best.alternatives[0].score < -1e8  # "C A" is all but impossible for the rescorer (logit -1e9)
