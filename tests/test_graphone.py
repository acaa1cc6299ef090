"""The joint-sequence (graphone) model: EM alignment, Kneser-Ney normalisation, scoring, saving, reranking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossway.data.text import Pair
from crossway.errors import CheckpointError, ConfigError
from crossway.graphone import GraphoneConfig, is_graphone, load_graphone, train_graphone
from crossway.inference import Translation
from crossway.rerank import TextScorer, candidate_scores, choose

# a toy lexicon: "ph" reads F, "ee" reads IY, "x" reads K S; every other letter its capital
WORDS = ["phase", "phone", "graph", "see", "tree", "feet", "box", "fox", "six", "taxes", "sheep", "photo",
         "seen", "keep", "peep", "phones", "axe", "fee", "free", "heap", "deep", "seep", "mix", "fix"]


def reading(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        two = word[i:i + 2]
        if two in ("ph", "ee"):
            out.append({"ph": "F", "ee": "IY"}[two])
            i += 2
            continue
        out.extend(["K", "S"] if word[i] == "x" else [word[i].upper()])
        i += 1
    return " ".join(out)


@pytest.fixture(scope="module")
def model():
    pairs = [Pair(w, reading(w), n) for n, w in enumerate(WORDS, 1)]
    return train_graphone(pairs, GraphoneConfig(order=3, iterations=10), log=lambda _: None)


def unit_texts(model, word, phones):
    (cut,) = model.cut([(tuple(word), tuple(phones.split()))])
    return [("".join(model.units[u][0]), " ".join(model.units[u][1])) for u in cut]


def test_em_learns_the_many_to_many_units(model):
    assert unit_texts(model, "phex", "F E K S") == [("ph", "F"), ("e", "E"), ("x", "K S")]
    assert unit_texts(model, "peeph", "P IY F") == [("p", "P"), ("ee", "IY"), ("ph", "F")]


def test_kneser_ney_distributions_sum_to_one(model):
    # every unit, eos and the one unseen-unit class; after bos, after a seen and after an unseen context
    vocab = [*range(len(model.units)), model.eos, model.unknown]
    ph = unit_texts(model, "ph", "F")
    assert len(ph) == 1
    ph_id = next(u for u in range(len(model.units)) if model.units[u] == (("p", "h"), ("F",)))
    for history in ([model.bos], [model.bos, ph_id], [ph_id, ph_id], [model.unknown]):
        total = sum(model.prob(history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9)


def test_the_right_reading_scores_highest(model):
    words = ["phee", "fix", "sheet"]
    right = [reading(w) for w in words]
    wrong = ["P H IY", "F I X", "S H E E T"]
    good, bad = model.score_texts(words, right), model.score_texts(words, wrong)
    assert all(g > b for g, b in zip(good, bad, strict=True)), (good, bad)
    assert isinstance(model, TextScorer)


def test_a_pair_without_cutting_scores_finite_and_lowest(model):
    # "x" -> 3 phones needs a 1 x 3 unit (max_tgt is 2)
    none, some = model.score_texts(["x", "x"], ["EH K S", "K S"])
    assert math.isfinite(none) and none < some


def test_save_and_load_give_the_same_scores(model, tmp_path):
    model.save(tmp_path / "g")
    assert is_graphone(tmp_path / "g") and not is_graphone(tmp_path)
    again = load_graphone(tmp_path / "g")
    words, outs = ["phee", "taxi", "zzz"], ["F IY", "T AE K S IY", "Z"]
    assert again.score_texts(words, outs) == model.score_texts(words, outs)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "graphone.json.gz").write_bytes(b"not gzip")
    with pytest.raises(CheckpointError, match="graphone.json.gz"):
        load_graphone(tmp_path / "bad")


def test_uncuttable_training_pairs_are_counted_not_hidden():
    lines = []
    train_graphone([Pair("ab", "A B", 1), Pair("x", "EH K S", 2), Pair("ba", "B A", 3)], GraphoneConfig(order=2),
                   log=lines.append)
    assert "2 pairs cut" in lines[-1] and "1 pairs left out" in lines[-1]


def test_config_is_checked():
    with pytest.raises(ConfigError, match="graphone.order"):
        GraphoneConfig(order=0)
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        GraphoneConfig(src_tokenizer="bpe")


def test_reranks_an_nbest_list(model):
    # the searching model prefers a wrong reading; the graphone model's log-probability overturns it
    wrong = Translation("F I X", ["F", "I", "X"], [], -0.1, True)
    right = Translation("F I K S", ["F", "I", "K", "S"], [], -0.5, True)
    out = Translation(wrong.text, wrong.tokens, [], wrong.score, True, alternatives=[right])
    scored = candidate_scores([out], ["fix"], [model])
    (lp_wrong, g_wrong), (lp_right, g_right) = scored[0][0][1], scored[0][1][1]
    assert (lp_wrong, lp_right) == (-0.1, -0.5) and g_right > g_wrong
    assert choose([out], scored, [1.0, 1.0], alpha=0.0)[0].text == "F I K S"
    assert choose([out], scored, [1.0, 0.0], alpha=0.0)[0].text == "F I X"
    assert np.isclose(choose([out], scored, [1.0, 1.0], alpha=0.0)[0].score, lp_right + g_right)


def test_search_reads_words_alone(model):
    phix, feeps, zee, empty = model.search(["phix", "feeps", "zee", ""], n_best=3)
    assert phix[0][0] == "F I K S"
    assert feeps[0][0] == "F IY P S" and len(feeps) == 3 and len({t for t, _ in feeps}) == 3
    assert [s for _, s in feeps] == sorted((s for _, s in feeps), reverse=True)
    assert zee[0][0] == "IY"  # "z" starts no unit: read as an unseen unit with no output
    assert empty[0][0] == ""


def test_blank_lines_of_a_training_file_are_left_out_and_counted(tmp_path):
    from crossway.graphone import train_graphone_file

    lines = [f"{w}\t{reading(w)}" for w in WORDS]
    lines[3:3] = ["", "\t"]
    (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
    said = []
    m = train_graphone_file(tmp_path / "t.tsv", tmp_path / "g", GraphoneConfig(order=3, iterations=5), said.append)
    assert any("2 blank or empty lines left out (first at line 4, 5)" in s for s in said)
    assert math.isfinite(m.score_texts(["phone"], ["F O N E"])[0])
