"""Ready-made models (crossway.pretrained), on a small run packaged as the G2P model is (`package_g2p`: float16
weights): the same outputs as the run, int8 by default and close to float32, the same through the library and the
command line, n-best; bad words and a missing model are clear errors. The real model's quality and speed are
measured by bench/g2p_pretrained.py (it is built by scripts/build_g2p.py, not committed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import crossway
from crossway import load_checkpoint, translate
from crossway.errors import ConfigError
from crossway.pretrained import G2P_DIR, g2p, load_g2p, package_g2p

WORDS = ["abc", "hgfedcb", "fedab", "cab", "gfe", "aabbcc", "hg", "dcbae"]


@pytest.fixture(scope="module")
def packed(served_runs, tmp_path_factory):
    run = served_runs["rnn"]
    return run, package_g2p(run, tmp_path_factory.mktemp("g2p") / "model")


def test_a_packaged_run_keeps_its_outputs_in_float16(packed):
    run, out = packed
    assert {f.name for f in out.iterdir()} == {"config.json", "vocab.json", "model.safetensors"}
    assert load_checkpoint(out).model.generator.weight.dtype == torch.float32  # stored float16, decoded float32
    original = load_checkpoint(run)
    want = [t.text for t in translate(original.model, original.src, original.tgt, WORDS, original.config.decode)]
    assert g2p(WORDS, model=out, quantize="none") == want
    assert g2p(WORDS[0], model=out, quantize="none") == want[0]  # a string in, a string out


def test_int8_is_the_default_and_close_to_float32(packed):
    _, out = packed
    assert not any(type(m) in (nn.GRU, nn.LSTM, nn.Linear) for m in load_g2p(out).model.modules())
    same = sum(a == b for a, b in zip(g2p(WORDS, model=out), g2p(WORDS, model=out, quantize="none"), strict=True))
    assert same >= len(WORDS) - 1


def test_n_best(packed):
    _, out = packed
    best = g2p(WORDS[:2], n_best=3, model=out)
    assert [len(b) for b in best] == [3, 3] and all(len(set(b)) == 3 for b in best)
    assert best[0][0] == g2p(WORDS[0], beam_size=3, model=out)


def test_bad_words_and_a_missing_model_are_clear_errors(packed, monkeypatch, tmp_path):
    _, out = packed
    for bad in ("", "two words", "tab\there"):
        with pytest.raises(ConfigError, match="one non-empty word"):
            g2p(["abc", bad], model=out)
    with pytest.raises(TypeError, match=r"words\[1\]"):
        g2p(["abc", 3], model=out)
    with pytest.raises(crossway.DataError, match="words:1"):
        g2p("a" * 41, model=out)  # over the model's input limit: an error, not a truncated word
    if not (G2P_DIR / "model.safetensors").exists():
        with pytest.raises(ConfigError, match="build_g2p.py"):
            g2p("abc")


def test_the_command_line_reads_arguments_or_stdin(packed):
    run, out = packed
    cmd = [sys.executable, "-m", "crossway", "g2p", "--model", str(out), "--quantize", "none"]
    p = subprocess.run([*cmd, "abc", "hgfedcb"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    want = g2p(["abc", "hgfedcb"], model=out, quantize="none")
    assert p.stdout == f"abc\t{want[0]}\nhgfedcb\t{want[1]}\n"
    p = subprocess.run([*cmd, "--n-best", "2"], input="abc cab\n", capture_output=True, text=True)
    assert p.returncode == 0 and [line.split("\t")[:2] for line in p.stdout.splitlines()] == \
        [["abc", "1"], ["abc", "2"], ["cab", "1"], ["cab", "2"]]
    p = subprocess.run([*cmd, "abz"], capture_output=True, text=True)
    assert p.returncode == 0 and "characters the model never saw" in p.stderr
