"""Sequence metrics with several references per input: pure functions over token lists.

In G2P each input is one word, so WER is the fraction of words whose output matches no reference
pronunciation, and PER is the phoneme edit distance to the closest reference over that reference's length.
"""

from __future__ import annotations

from collections.abc import Sequence

# Every metric a task can validate with, and which way is better: train.metric (early stopping, best/) is one of
# these, and each task lists the ones it computes (training.task.Task.metrics).
# bleu is sacrebleu's (0-100); bleu4 and cider are the COCO caption evaluation's (crossway.caption_metrics: BLEU-4
# in 0-1, CIDEr-D with its x10 scale).
METRICS = {"loss": "min", "wer": "min", "per": "min", "cer": "min", "exact_match": "max", "bleu": "max",
           "chrf": "max", "ter": "min", "dice": "max", "iou": "max", "pixel_accuracy": "max", "boundary_f1": "max",
           "bleu4": "max", "cider": "max"}


def check_references(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    """Raise ValueError unless hyps are strings and refs[i] is a non-empty list of reference strings for hyps[i].

    The mistake this catches is one reference per input passed unwrapped (refs=["a cat", "a dog"]): a string is
    itself a sequence of strings, so it would be scored as references of one character each.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise ValueError(f"hyps[{i}] must be a string, got a {type(h).__name__}")
    for i, rs in enumerate(refs):
        if isinstance(rs, str) or not isinstance(rs, Sequence):
            raise ValueError(f"refs[{i}] must be a list of reference strings, got a {type(rs).__name__}")
        if not rs:
            raise ValueError(f"refs[{i}] is empty: every hypothesis needs at least one reference")
        for j, r in enumerate(rs):
            if not isinstance(r, str):
                raise ValueError(f"refs[{i}][{j}] must be a string, got a {type(r).__name__}")


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit costs) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def closest(hyp: Sequence, refs: Sequence[Sequence]) -> tuple[int, int]:
    """(edit distance, reference length) for the reference closest to hyp (shorter reference on ties)."""
    return min((edit_distance(hyp, r), len(r)) for r in refs)


def position_errors(hyp: Sequence, ref: Sequence) -> list[bool]:
    """Per reference position, whether a minimal Levenshtein alignment of hyp to ref gets it wrong: the token is
    substituted or deleted, or a token is inserted just before it (after the last position at the end). For errors
    by output position (exposure bias); ties in the alignment prefer a match or substitution, then a deletion."""
    n, m = len(hyp), len(ref)
    d = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]))
    wrong, i, j = [False] * m, n, m
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]):
            wrong[j - 1] |= hyp[i - 1] != ref[j - 1]
            i, j = i - 1, j - 1
        elif j and d[i][j] == d[i][j - 1] + 1:  # ref[j - 1] deleted
            wrong[j - 1], j = True, j - 1
        else:  # hyp[i - 1] inserted before ref[j]
            if m:
                wrong[min(j, m - 1)] = True
            i -= 1
    return wrong


def error_rates(hyps: Sequence[list[str]], refs: Sequence[Sequence[list[str]]]) -> dict[str, float]:
    """hyps[i] is a token list, refs[i] a non-empty list of token lists.

    wer: inputs whose output equals no reference; per: token edits to the closest reference / its length;
    cer: the same on characters of the space-joined strings; exact_match = 1 - wer.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    n = len(hyps)
    if n == 0:
        return {"n": 0, "wer": 0.0, "per": 0.0, "cer": 0.0, "exact_match": 0.0}
    wrong = tok_err = tok_len = chr_err = chr_len = 0
    for h, rs in zip(hyps, refs, strict=True):
        wrong += all(list(h) != list(r) for r in rs)
        d, ln = closest(h, rs)
        tok_err, tok_len = tok_err + d, tok_len + ln
        d, ln = closest(" ".join(h), [" ".join(r) for r in rs])
        chr_err, chr_len = chr_err + d, chr_len + ln
    return {
        "n": n,
        "wer": wrong / n,
        "per": tok_err / max(1, tok_len),
        "cer": chr_err / max(1, chr_len),
        "exact_match": 1 - wrong / n,
    }


def line_error_rates(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Character and word error rates of text lines (OCR, speech): against each output's closest reference
    (fewest character edits), cer = character edits / reference characters and wer = word edits (words split on
    whitespace) / reference words, both summed over the corpus; exact_match = outputs equal to a reference."""
    check_references(hyps, refs)
    c_err = c_len = w_err = w_len = exact = 0
    for h, rs in zip(hyps, refs, strict=True):
        d, r = min((edit_distance(h, r), r) for r in rs)
        c_err, c_len = c_err + d, c_len + len(r)
        w_err, w_len = w_err + edit_distance(h.split(), r.split()), w_len + len(r.split())
        exact += h in rs
    n = len(hyps)
    return {"n": n, "cer": c_err / max(1, c_len), "wer": w_err / max(1, w_len), "exact_match": exact / max(1, n)}


SACREBLEU_METRICS = ("bleu", "chrf", "ter")


def sacrebleu_available() -> bool:
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        return False
    return True


def sacrebleu_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict:
    """Corpus BLEU, chrF and TER of detokenized text through sacrebleu (default settings: 13a tokenization,
    mixed case), with their signatures and BLEU's length ratio (output tokens / closest reference tokens).
    refs[i] lists the references of hyps[i]; inputs with fewer references repeat their first, which changes none
    of the three scores (each takes the best match over references)."""
    try:
        from sacrebleu.metrics import BLEU, CHRF, TER
    except ImportError as e:
        raise ImportError("BLEU, chrF and TER need sacrebleu: pip install crossway[mt]") from e
    check_references(hyps, refs)
    width = max((len(r) for r in refs), default=1)
    streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(width)]
    out: dict = {"signatures": {}}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        result = metric.corpus_score(list(hyps), streams)
        out[name] = result.score
        out["signatures"][name] = str(metric.get_signature())
        if name == "bleu":  # BLEU's output / reference length (13a tokens; its brevity penalty starts below 1)
            out["length_ratio"] = result.sys_len / max(result.ref_len, 1)
    return out


def normalize_english(text: str) -> str:
    """The text normaliser applied before speech WER and CER: Unicode NFKC, lower case, every character that is
    not a letter, digit or whitespace (punctuation, symbols, apostrophes: "God's" -> "gods") removed, except
    hyphens and dashes, which become spaces ("well-known" -> "well known"), then whitespace folded to single
    spaces. Simpler than Whisper's EnglishTextNormalizer: no spelling or number rewriting, so "24,000" stays
    "24000" and must be transcribed as digits."""
    import unicodedata

    out = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        cat = unicodedata.category(ch)
        if ch.isspace() or cat == "Pd":
            out.append(" ")
        elif cat[0] in "LN" or cat[0] == "M":
            out.append(ch)
    return " ".join("".join(out).split())


def speech_error_rates(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER after normalize_english: word (character) edits / reference words (characters),
    summed over the corpus; exact_match on the normalised text."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    w_err = w_len = c_err = c_len = exact = 0
    for h, r in zip(hyps, refs, strict=True):
        h, r = normalize_english(h), normalize_english(r)
        w_err, w_len = w_err + edit_distance(h.split(), r.split()), w_len + len(r.split())
        c_err, c_len = c_err + edit_distance(h, r), c_len + len(r)
        exact += h == r
    n = len(hyps)
    return {"n": n, "wer": w_err / max(1, w_len), "cer": c_err / max(1, c_len), "exact_match": exact / max(1, n)}
