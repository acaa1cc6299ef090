"""crossway.load: a run in one line, its task's methods with decoding options as keywords, clear errors."""

from __future__ import annotations

import pytest
import torch

import crossway
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError
from crossway.inference import translate
from crossway.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def text_run(served_runs):
    return served_runs["rnn"]


def test_translate_strings_and_lists_like_the_library(text_run):
    m = crossway.load(text_run)
    assert m.task == "text" and "rnn" in repr(m)
    loaded = load_checkpoint(text_run)
    words = ["abc", "hgfe", "dd"]
    expected = translate(loaded.model, loaded.src, loaded.tgt, words, loaded.config.decode)
    assert m.translate(words) == [o.text for o in expected]
    assert m.translate("abc") == expected[0].text  # a string in, a string out
    beam = DecodeConfig(strategy="beam", beam_size=4, n_best=2)
    best = translate(loaded.model, loaded.src, loaded.tgt, words, beam)
    got = m.translate(words, strategy="beam", beam_size=4, n_best=2, details=True)
    assert [o.text for o in got] == [o.text for o in best]
    assert [len(o.alternatives) for o in got] == [1, 1, 1]


def test_an_ensemble_and_threads(text_run, served_runs):
    m = crossway.load([text_run, text_run], threads=1)
    assert m.translate(["abc"]) == crossway.load(text_run).translate(["abc"])
    assert torch.get_num_threads() == 1


def test_wrong_arguments_are_clear_errors(text_run):
    m = crossway.load(text_run)
    with pytest.raises(ConfigError, match="unknown decoding option.*beamsize"):
        m.translate("abc", beamsize=5)
    with pytest.raises(ConfigError, match="beam_size"):
        m.translate("abc", strategy="beam", beam_size=0)
    with pytest.raises(TypeError, match=r"texts\[0\] .*a list of lists"):
        m.translate([["abc"]])
    with pytest.raises(TypeError, match="texts must be"):
        m.translate(42)
    with pytest.raises(ConfigError, match="text run: it has no caption"):
        m.caption("img.png")
    with pytest.raises(ConfigError, match="text run: it has no segment"):
        m.segment("img.png")
