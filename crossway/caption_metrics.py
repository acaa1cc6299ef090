"""Image-captioning metrics as the COCO caption evaluation computes them: BLEU-1..4 and CIDEr-D.

The numbers equal those of pycocoevalcap's `Bleu(4)` and `Cider` (its bleu/bleu_scorer.py and
cider/cider_scorer.py; CIDEr-D: Vedantam et al. 2015, https://arxiv.org/abs/1411.5726) on the same tokenised
captions, down to their smoothing constants and quirks, so that scores can be compared with published ones. All
functions take hypotheses as strings and refs[i] as the list of reference strings of hyps[i]; `bleu` and
`cider_d` split on whitespace and expect captions already tokenised, `caption_scores` tokenises with
`coco_tokenize` first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from crossway.metrics import check_references

# pycocoevalcap's BLEU smoothing: every n-gram precision is (matches + TINY) / (guesses + SMALL), so an order with
# no guesses (hypothesis shorter than n) scores 1e-6 rather than dividing by zero, and no matches gives ~0.
TINY = 1e-15
SMALL = 1e-9
MAX_N = 4  # CIDEr-D sums 1- to 4-grams
CIDER_SCALE = 10.0  # CIDEr-D multiplies the mean cosine similarity by 10

# The tokens pycocoevalcap drops after its PTBTokenizer (tokenizer/ptbtokenizer.py, PUNCTUATIONS), compared as
# written. The tokenizer runs with -lowerCase, which also lowercases the bracket names, so "-LRB-" never matches and
# brackets stay in the COCO captions as "-lrb-" etc.; coco_tokenize does the same.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])
# Characters PTB rewrites before PUNCTUATIONS is applied: brackets to their names, Unicode quotes and dashes to the
# ASCII ones (" and dashes end up dropped).
_REWRITE = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- ",
            '"': " ", "\u201c": " ", "\u201d": " ", "\u2018": "'", "\u2019": "'", "\u2014": " -- ", "\u2013": " -- "}
# Words PTB splits in two, and abbreviations whose period it keeps.
_SPLIT = re.compile(r"\b(?=(?:cannot|gonna|gotta|wanna|lemme|gimme)\b)(\w{3})")  # can not, gon na, ...
_ABBREVIATIONS = "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|corp|ave|mt"
# PTB splits these clitics off the word before them ("dog's" -> "dog 's", "don't" -> "do n't").
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'m|'d)(?!\w)")
_TOKEN = re.compile(rf"""
    -l[rsc]b- | -r[rsc]b-                     # bracket names put in by _REWRITE
  | n't | '(?:s|re|ve|ll|m|d)(?!\w)           # clitics split off by _CLITIC
  | (?:[^\W_]\.){{2,}}                        # abbreviations keep their final period: u.s. p.m.
  | \b(?:{_ABBREVIATIONS})\.                  # and these: mr. st. etc.
  | \#[^\W\d]\w*                             # hashtags
  | \w+(?:(?:[-./'&]|(?<=\d):(?=\d))\w+)*     # words with inner hyphens, periods, slashes: t-shirt 3.5 10:30
  | [!?]{{2,}}                                 # runs of ! and ? stay (PTB keeps "!?" and "!!")
  | ([^\w\s])\1*                              # any other symbol, a run of the same one as one token: ... --
""", re.VERBOSE)


def coco_tokenize(text: str) -> str:
    """Lowercase, split into PTB-like tokens, drop pycocoevalcap's punctuation tokens, join with single spaces.

    A Java-free stand-in for pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 run with -lowerCase, then the
    PUNCTUATIONS tokens removed), written from its observed output: "The dog's ball; it's 3.5 inches!" ->
    "the dog 's ball it 's 3.5 inches", "A man (in a T-shirt)." -> "a man -lrb- in a t-shirt -rrb-". It agrees on
    ordinary captions; it differs on PTB's rarer rules ("'tis" -> "'t is", "rock'n'roll" -> "rock 'n' roll",
    "3:00pm" -> "3:00 pm", "a...b" -> "a. b"), on abbreviations outside its short list ("no. 5"), on HTML-like tags
    ("<b>", which PTB keeps whole), and on characters PTB cannot tokenise (emoji), which PTB drops and this keeps.
    """
    text = text.lower()
    for char, replacement in _REWRITE.items():
        text = text.replace(char, replacement)
    text = _SPLIT.sub(r"\1 ", _CLITIC.sub(r" \1", text))
    tokens = (m.group(0) for m in _TOKEN.finditer(text))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def _ngram_counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    """Counts of the 1- to n-grams of words, in pycocoevalcap's order (unigrams left to right, then bigrams, ...),
    the order in which CIDEr-D adds up its floats."""
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            gram = tuple(words[i:i + k])
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n, in 0-1, as pycocoevalcap's Bleu(n).compute_score (option "closest").

    Matches of each hypothesis n-gram are clipped by its largest count in one reference; BLEU-k is the geometric
    mean of the smoothed precisions (matches + TINY) / (guesses + SMALL) of orders 1..k, summed over the corpus,
    times the brevity penalty exp(1 - r / c) when c < r, where c is the total hypothesis length and r the sum over
    inputs of the reference length closest to the hypothesis length (the shorter on ties).
    """
    check_references(hyps, refs)
    guesses, matches = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs, strict=True):
        words = hyp.split()
        best: dict[tuple[str, ...], int] = {}  # the most times each n-gram occurs in one reference
        lengths = []
        for ref in rs:
            ref_words = ref.split()
            lengths.append(len(ref_words))
            for gram, count in _ngram_counts(ref_words, n).items():
                best[gram] = max(best.get(gram, 0), count)
        hyp_len += len(words)
        ref_len += min((abs(length - len(words)), length) for length in lengths)[1]
        for gram, count in _ngram_counts(words, n).items():
            matches[len(gram) - 1] += min(count, best.get(gram, 0))
        for k in range(n):
            guesses[k] += max(0, len(words) - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= (matches[k] + TINY) / (guesses[k] + SMALL)
        scores.append(product ** (1 / (k + 1)))
    ratio = (hyp_len + TINY) / (ref_len + SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def _tfidf(counts: dict[tuple[str, ...], int], doc_freq: dict, log_n: float) -> tuple[list[dict], list[float], int]:
    """Per n-gram order: {n-gram: tf * idf} and its Euclidean norm, and the length CIDEr-D's penalty compares.

    idf = log(number of images) - log(max(1, images whose references contain the n-gram)). The length is the
    number of bigrams, not words: pycocoevalcap counts term frequencies where its 0-based order index is 1. It
    is the word count minus one, which cancels in the penalty, except for an empty caption (0 bigrams, not -1).
    """
    vecs: list[dict] = [{} for _ in range(MAX_N)]
    sq = [0.0] * MAX_N
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        weight = float(tf) * (log_n - math.log(max(1.0, doc_freq.get(gram, 0.0))))
        vecs[k][gram] = weight
        sq[k] += weight ** 2
        if k == 1:
            length += tf
    return vecs, [math.sqrt(s) for s in sq], length


def _similarity(hyp: tuple, ref: tuple, sigma: float) -> list[float]:
    """Per order: clipped cosine similarity of the tf-idf vectors times the Gaussian length penalty."""
    (h_vecs, h_norms, h_len), (r_vecs, r_norms, r_len) = hyp, ref
    penalty = math.e ** (-(float(h_len - r_len) ** 2) / (2 * sigma ** 2))
    out = []
    for k in range(MAX_N):
        val = 0.0
        for gram, weight in h_vecs[k].items():
            r = r_vecs[k].get(gram, 0.0)
            val += min(weight, r) * r  # CIDEr-D clips the hypothesis weight by the reference's
        if h_norms[k] != 0 and r_norms[k] != 0:
            val /= h_norms[k] * r_norms[k]
        out.append(val * penalty)
    return out


def cider_d_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]], sigma: float = 6.0) -> list[float]:
    """CIDEr-D of each hypothesis, as pycocoevalcap's Cider().compute_score returns them per image.

    Document frequencies come from the references of the hyps being scored (so a score depends on the rest of
    the corpus, and a corpus of one image scores 0: every idf is log 1 - log 1). Each image scores 10 times the
    mean over references of the mean over n-gram orders 1-4 of `_similarity`, so a perfect caption of fewer than
    four words cannot reach 10.
    """
    check_references(hyps, refs)
    if not hyps:
        return []
    ref_counts = [[_ngram_counts(r.split(), MAX_N) for r in rs] for rs in refs]
    doc_freq: dict[tuple[str, ...], float] = {}
    for counts in ref_counts:
        for gram in {g for c in counts for g in c}:
            doc_freq[gram] = doc_freq.get(gram, 0.0) + 1
    log_n = math.log(float(len(hyps)))
    scores = []
    for hyp, counts in zip(hyps, ref_counts, strict=True):
        h = _tfidf(_ngram_counts(hyp.split(), MAX_N), doc_freq, log_n)
        total = [0.0] * MAX_N
        for c in counts:
            sims = _similarity(h, _tfidf(c, doc_freq, log_n), sigma)
            total = [t + s for t, s in zip(total, sims, strict=True)]
        scores.append(sum(total) / MAX_N / len(counts) * CIDER_SCALE)
    return scores


def cider_d(hyps: Sequence[str], refs: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_scores` (pycocoevalcap's Cider score, whose numpy mean can differ in
    the last bit from this exactly rounded one); 0.0 for no hypotheses."""
    scores = cider_d_scores(hyps, refs, sigma)
    return math.fsum(scores) / len(scores) if scores else 0.0


def caption_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict:
    """BLEU-4 (0-1), CIDEr-D and exact match (the hypothesis equals some reference) after `coco_tokenize`."""
    check_references(hyps, refs)
    hyps = [coco_tokenize(h) for h in hyps]
    refs = [[coco_tokenize(r) for r in rs] for rs in refs]
    n = len(hyps)
    exact = sum(h in rs for h, rs in zip(hyps, refs, strict=True))
    return {"n": n, "bleu4": bleu(hyps, refs)[3], "cider": cider_d(hyps, refs), "exact_match": exact / max(1, n)}
