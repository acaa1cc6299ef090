import contextlib
import io
import math
import random
import shutil

import pytest

from crossway.caption_metrics import bleu, caption_scores, cider_d, cider_d_scores, coco_tokenize
from crossway.metrics import sacrebleu_scores

# Captions on which coco_tokenize and pycocoevalcap's PTBTokenizer give the same tokens (checked against the real
# tokenizer below when Java is installed).
CAPTIONS = {
    "A man (in a red T-shirt) rides a bike.": "a man -lrb- in a red t-shirt -rrb- rides a bike",
    "The dog's ball; it's 3.5 inches!": "the dog 's ball it 's 3.5 inches",
    'Don\'t stop -- "quoted" text, ok?': "do n't stop quoted text ok",
    "Two [bracketed] {braces} & $5 / 50% off #tag":
        "two -lsb- bracketed -rsb- -lcb- braces -rcb- & $ 5 / 50 % off #tag",
    "U.S. flag... hmm": "u.s. flag hmm",
    "dogs' toys `tick` 'single'": "dogs toys tick single",
    "well-known -dash- end-": "well-known dash end",
    "hello,world a:b x;y": "hello world a b x y",
    "A  MAN   Riding": "a man riding",
    "they'll we've I'm he'd you're cannot gonna": "they 'll we 've i 'm he 'd you 're can not gon na",
    "e-mail @ home: 10:30 p.m.": "e-mail @ home 10:30 p.m.",
    "Dr. Who and Mrs. Brown on Main St.": "dr. who and mrs. brown on main st.",
    "It is 5 o'clock, it's a bird!?": "it is 5 o'clock it 's a bird !?",
    "A “quoted” word’s end — fin": "a quoted word 's end fin",
    "": "",
}


def random_corpus(seed: int, images: int = 200) -> tuple[list[str], list[list[str]]]:
    """Captions over a small vocabulary, so n-grams repeat within and across images; some hypotheses copy a
    reference, some are empty."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(rng.choice([4, 8, 15]))]

    def caption(shortest: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(shortest, 12)))

    refs = [[caption(1 if rng.random() < 0.95 else 0) for _ in range(rng.randint(1, 5))] for _ in range(images)]
    hyps = [rng.choice(rs) if rng.random() < 0.2 else caption(0) for rs in refs]
    return hyps, refs


def test_coco_tokenize():
    for text, tokens in CAPTIONS.items():
        assert coco_tokenize(text) == tokens, text


def test_coco_tokenize_matches_ptbtokenizer():
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    if shutil.which("java") is None:
        pytest.skip("PTBTokenizer needs Java")
    out = ptb.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    assert [out[i][0] for i in range(len(CAPTIONS))] == list(CAPTIONS.values())


def test_bleu_identical_and_disjoint():
    assert bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx([1.0] * 4, abs=1e-9)
    assert max(bleu(["a b c d"], [["e f g h"]])) < 1e-12


def test_bleu_clips_repeated_words():
    # "the" counts once: the reference has it once. One-word references leave no bigrams to match.
    assert bleu(["the the the the"], [["the cat"]], n=1) == pytest.approx([1 / 4])


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    # 2 words against a 4-word reference: precisions 1, penalty exp(1 - 4/2)
    assert bleu(["a b"], [["a b c d"]], n=2) == pytest.approx([math.exp(-1)] * 2)
    # 4 words, references of 1 and 5 words: the closest is 5
    assert bleu(["a b c d"], [["a", "a b c d e"]], n=1) == pytest.approx([math.exp(1 - 5 / 4)])
    # 3 words, references of 2 and 4 words: a tie goes to the shorter, so no penalty
    assert bleu(["a b c"], [["a b", "a b c d"]], n=1) == pytest.approx([1.0])


def test_bleu_orders_without_guesses_are_smoothed():
    # A 2-word hypothesis has no trigrams: that precision is TINY / SMALL = 1e-6, as in pycocoevalcap.
    assert bleu(["a b"], [["a b"]], n=3)[2] == pytest.approx(1e-6 ** (1 / 3))


def test_cider_d_of_perfect_captions():
    # Two images with disjoint words: every idf is log 2, each order present scores cosine 1. Two-word captions have
    # no 3- or 4-grams, so a perfect one scores 10 * (1 + 1 + 0 + 0) / 4.
    assert cider_d_scores(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx([5.0, 5.0])
    assert cider_d(["a b c d", "e f g h", "i j k l"], [["a b c d"], ["e f g h"], ["i j k l"]]) == pytest.approx(10.0)
    # the mean over references: two identical references score as one
    assert cider_d_scores(["a b", "c d"], [["a b", "a b"], ["c d"]]) == pytest.approx([5.0, 5.0])


def test_cider_d_clips_and_penalises_length():
    # Image 1: hypothesis "a a b" against "a b" (idf log 2 throughout, which cancels in the cosines).
    # Unigrams {a: 2, b: 1} vs {a: 1, b: 1}: clipped numerator min(2, 1) * 1 + 1 * 1 = 2 over sqrt(5) * sqrt(2).
    # Bigrams {aa, ab} vs {ab}: 1 / sqrt(2). No reference trigrams: 0. Lengths (in bigrams) 2 vs 1: exp(-1 / 72).
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / (2 * 6.0 ** 2))
    scores = cider_d_scores(["a a b", "c d"], [["a b"], ["c d"]])
    assert scores == pytest.approx([expected, 5.0])
    # a wide Gaussian removes the length penalty
    wide = cider_d_scores(["a a b", "c d"], [["a b"], ["c d"]], sigma=1e9)
    assert wide[0] == pytest.approx(expected * math.exp(1 / 72))


def test_cider_d_depends_on_the_corpus():
    # idf is log(images) - log(df): one image gives every n-gram idf 0, so CIDEr-D is 0 however good the caption.
    assert cider_d(["a b c d"], [["a b c d"]]) == 0.0
    # an n-gram in every image's references carries no weight
    assert cider_d_scores(["x", "x"], [["x a"], ["x b"]]) == [0.0, 0.0]
    assert cider_d([], []) == 0.0 and cider_d_scores([], []) == []


def test_caption_scores():
    hyps = ["A dog runs.", "a cat sleeps on a mat"]
    refs = [["a dog runs", "The dog is running."], ["A cat sleeping on the mat."]]
    s = caption_scores(hyps, refs)
    assert s["n"] == 2 and s["exact_match"] == 0.5
    tokens = [coco_tokenize(h) for h in hyps], [[coco_tokenize(r) for r in rs] for rs in refs]
    assert s["bleu4"] == bleu(*tokens)[3] and s["cider"] == cider_d(*tokens)


@pytest.mark.parametrize("score", [caption_scores, bleu, cider_d, sacrebleu_scores])
def test_references_as_plain_strings_are_refused(score):
    if score is sacrebleu_scores:
        pytest.importorskip("sacrebleu")
    with pytest.raises(ValueError, match=r"refs\[0\] must be a list of reference strings, got a str"):
        score(["a cat", "a dog"], ["a cat", "a dog"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference sets"):
        score(["a cat", "a dog"], [["a cat"]])
    with pytest.raises(ValueError, match=r"refs\[1\] is empty"):
        score(["a cat", "a dog"], [["a cat"], []])
    with pytest.raises(ValueError, match=r"hyps\[0\] must be a string, got a list"):
        score([["a", "cat"]], [["a cat"]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpora_match_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = random_corpus(seed)
    gts, res = dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        want_bleu, _ = Bleu(4).compute_score(gts, res)
    want_cider, want_per_image = Cider().compute_score(gts, res)
    assert bleu(hyps, refs) == pytest.approx(want_bleu, rel=0, abs=1e-9)
    assert cider_d(hyps, refs) == pytest.approx(float(want_cider), rel=0, abs=1e-9)
    assert cider_d_scores(hyps, refs) == pytest.approx(list(want_per_image), rel=0, abs=1e-9)
