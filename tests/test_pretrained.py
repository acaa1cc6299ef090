"""The G2P model that ships inside the package (crossway.pretrained): usable with no training and no data, small,
right on common words it never saw, fast on one thread (int8 by default, close to float32), and the same through
the library and the command line; bad words are clear errors; `package_g2p` writes a run as such a model
(float16 weights, same outputs)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

import crossway
from crossway import load_checkpoint, translate
from crossway.errors import ConfigError
from crossway.pretrained import G2P_DIR, g2p, package_g2p

# test-split words (`crossway data g2p`: split by hash, never trained on) and their CMUdict pronunciations
UNSEEN = {"activity": ["AE K T IH V AH T IY", "AE K T IH V IH T IY"], "building": ["B IH L D IH NG"],
          "document": ["D AA K Y AH M EH N T", "D AA K Y UW M EH N T"],
          "emotion": ["IH M OW SH AH N", "IY M OW SH AH N"],
          "equation": ["IH K W EY ZH AH N"], "invention": ["IH N V EH N SH AH N"], "teaching": ["T IY CH IH NG"],
          "thinking": ["TH IH NG K IH NG"], "greeting": ["G R IY T IH NG"], "measuring": ["M EH ZH ER IH NG"]}


def test_the_shipped_model_is_small_and_needs_nothing_else():
    files = {f.name: f.stat().st_size for f in G2P_DIR.iterdir()}
    assert set(files) == {"config.json", "vocab.json", "model.safetensors"}
    assert sum(files.values()) <= 10_000_000
    assert crossway.g2p("crossway") == g2p("crossway") and isinstance(g2p("crossway"), str)


def test_it_gets_most_common_unseen_words_right():
    from crossway.data.g2p import split_of

    assert {split_of(w) for w in UNSEEN} == {"test"}
    got = g2p(list(UNSEEN))
    assert sum(g in want for g, want in zip(got, UNSEEN.values(), strict=True)) >= 8, got


def test_n_best_and_beam():
    best = g2p(["read", "lead"], n_best=3)
    assert [len(b) for b in best] == [3, 3] and all(len(set(b)) == 3 for b in best)
    assert g2p("thinking", beam_size=5) in UNSEEN["thinking"]


def test_it_decodes_over_a_thousand_words_a_second_on_one_thread():
    words = [w + s for w in UNSEEN for s in ("", "s", "ed", "ing", "er", "ly", "ness", "ful", "less", "ism")] * 20
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g2p(words[:50])
        start = time.perf_counter()
        g2p(words)
        rate = len(words) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert rate >= 500, f"{rate:.0f} words/s"  # (measured ~1,000+ alone; a loaded test machine runs slower)


def test_bad_words_are_clear_errors():
    for bad in ("", "two words", "tab\there"):
        with pytest.raises(ConfigError, match="one non-empty word"):
            g2p(["fine", bad])
    with pytest.raises(TypeError, match=r"words\[1\]"):
        g2p(["fine", 3])
    with pytest.raises(crossway.DataError, match="words:1"):
        g2p("a" * 41)  # over the model's 40 characters: an error, not a truncated word


def test_the_command_line_reads_arguments_or_stdin():
    run = [sys.executable, "-m", "crossway", "g2p"]
    p = subprocess.run([*run, "building", "Teaching"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"building\t{UNSEEN['building'][0]}\nTeaching\t{UNSEEN['teaching'][0]}\n"
    p = subprocess.run([*run, "--n-best", "2"], input="read lead\n", capture_output=True, text=True)
    assert p.returncode == 0 and [line.split("\t")[:2] for line in p.stdout.splitlines()] == \
        [["read", "1"], ["read", "2"], ["lead", "1"], ["lead", "2"]]
    p = subprocess.run([*run, "naïve"], capture_output=True, text=True)
    assert p.returncode == 0 and "1 characters the model never saw" in p.stderr


def test_package_g2p_keeps_a_runs_outputs_in_float16(served_runs, tmp_path):
    run = served_runs["rnn"]
    out = package_g2p(run, tmp_path / "g2p")
    packed = load_checkpoint(out)
    assert packed.model.generator.weight.dtype == torch.float32  # stored float16, decoded in float32
    original = load_checkpoint(run)
    words = ["abc", "hgfedcb", "fedab", "cab"]
    want = [t.text for t in translate(original.model, original.src, original.tgt, words, original.config.decode)]
    assert g2p(words, model=out, quantize="none") == want


def test_int8_is_the_default_and_mostly_agrees_with_float32():
    from torch import nn

    from crossway.pretrained import load_g2p

    int8 = load_g2p().model
    assert not any(type(m) in (nn.LSTM, nn.Linear) for m in int8.modules())  # LSTMs and linear layers quantized
    words = [w + s for w in UNSEEN for s in ("", "s", "ed", "ing", "er", "ly", "ness", "ful", "less", "ism")]
    same = sum(a == b for a, b in zip(g2p(words), g2p(words, quantize="none"), strict=True))
    assert same >= 0.9 * len(words), same
