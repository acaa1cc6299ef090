"""Pretraining objectives as data transforms: token ids of a text chunk in, a (noised input, target) pair out.

n tokens in a chunk, m of them masked, k spans. Both functions are pure given their `random.Random`, so an epoch's
examples are a function of (seed, epoch, chunk) and a resumed run sees the same noise.

T5 span corruption (Raffel et al. 2020, section 3.1.4 and t5.data.preprocessors.random_spans_noise_mask):
  m = round(n * noise_density) (clipped to 1 .. n - 1) noise tokens in k = round(m / mean_span) spans (at least
  1); the noise and non-noise tokens are each split into k non-empty runs at random cuts and interleaved, non-noise
  first, so the chunk ends with a noise span. Input: the non-noise runs with noise span i replaced by sentinel i.
  Target: sentinel i followed by noise span i, for each i. Sentinels count down from the end of the vocabulary
  (<extra_id_0> is the last id), as in T5.
BART text infilling and sentence permutation (Lewis et al. 2020, section 2.2), with the paper's settings: the
  chunk's sentences (here: its lines) in a random order, then m = round(n * mask_ratio) tokens masked in spans
  whose lengths are drawn from Poisson(lambda) until they cover m (the last one cut to fit), each span replaced by
  one <mask> token (a length-0 span inserts a <mask>); spans never touch, so every <mask> stands for one span.
  Target: the original chunk, sentences in their original order. fairseq's BART recipe differs (lambda 3.5, 10%
  of masks replaced by random tokens, whole-word masking); crossway follows the paper.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from crossway.errors import ConfigError

OBJECTIVES = ("t5", "bart")


@dataclass(frozen=True, kw_only=True)
class PretrainDataConfig:
    train: str = ""  # text files (a sentence per line) or, with format tsv, TSV files; comma-separated
    valid: str = ""
    format: str = "text"  # text | tsv
    columns: str = "0"  # tsv: the columns read, comma-separated (indices, or names with header), each a stream
    header: bool = False
    objective: str = "t5"  # t5 (span corruption) | bart (text infilling + sentence permutation)
    noise_density: float = 0.15  # t5: fraction of tokens in noise spans
    mean_span: float = 3.0  # t5: mean noise span length
    mask_ratio: float = 0.3  # bart: fraction of tokens masked
    poisson_lambda: float = 3.0  # bart: span lengths ~ Poisson(lambda)
    permute_sentences: bool = True  # bart: the chunk's lines in a random order before infilling
    chunk_tokens: int = 128  # consecutive lines packed into chunks of at most this many tokens
    sentinels: int = 100  # t5: sentinel tokens in the vocabulary (T5: 100)
    spm_vocab_size: int = 8000  # the SentencePiece model trained on the training text (joint: all streams)
    spm_model_type: str = "unigram"
    spm_sample: int = 2_000_000
    vocab: str = ""  # reuse this run's vocabulary instead (it must hold <mask> and the sentinels)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"data.objective must be one of {list(OBJECTIVES)}, not {self.objective!r}")
        if self.format not in ("text", "tsv"):
            raise ConfigError(f"data.format must be text or tsv, not {self.format!r}")
        for name in ("noise_density", "mask_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("mean_span", "poisson_lambda"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name} must be > 0, got {getattr(self, name)}")
        for name in ("chunk_tokens", "sentinels", "spm_vocab_size", "spm_sample"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk_tokens < 2:
            raise ConfigError("data.chunk_tokens must be >= 2")


def _segments(items: int, parts: int, rng: random.Random) -> list[int]:
    """`items` split into `parts` non-empty runs at uniformly random cuts -> run lengths (T5's
    _random_segmentation)."""
    cuts = sorted(rng.sample(range(1, items), parts - 1))
    bounds = [0, *cuts, items]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def noise_spans(n: int, noise_density: float, mean_span: float, rng: random.Random) -> list[tuple[int, int]]:
    """T5's noise mask of a chunk of n >= 2 tokens as spans [(start, length), ...] in order."""
    m = min(max(round(n * noise_density), 1), n - 1)
    k = min(max(round(m / mean_span), 1), n - m)
    noise, keep = _segments(m, k, rng), _segments(n - m, k, rng)
    spans, pos = [], 0
    for kept, noisy in zip(keep, noise, strict=True):
        pos += kept
        spans.append((pos, noisy))
        pos += noisy
    return spans


def span_corruption(ids: list[int], sentinels: list[int], rng: random.Random, noise_density: float = 0.15,
                    mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5's objective: ids (n,) -> (input ids, target ids). `sentinels[i]` is the id of <extra_id_i>."""
    if len(ids) < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {len(ids)}")
    spans = noise_spans(len(ids), noise_density, mean_span, rng)
    if len(spans) > len(sentinels):
        raise ValueError(f"{len(spans)} noise spans need more than the {len(sentinels)} sentinel tokens")
    inputs, targets, pos = [], [], 0
    for i, (start, length) in enumerate(spans):
        inputs += [*ids[pos:start], sentinels[i]]
        targets += [sentinels[i], *ids[start:start + length]]
        pos = start + length
    return inputs + ids[pos:], targets


def infill_spans(n: int, mask_ratio: float, poisson_lambda: float, rng: random.Random) -> list[tuple[int, int]]:
    """BART's masked spans of a chunk of n tokens as [(start, length), ...] in order, lengths summing to
    round(n * mask_ratio); spans are separated by at least one kept token (length-0 spans are insertions)."""
    m = round(n * mask_ratio)
    lengths, covered = [], 0
    while covered < m:
        length = min(_poisson(poisson_lambda, rng), m - covered)
        lengths.append(length)
        covered += length
    kept = n - m
    while len(lengths) > kept + 1:  # more spans than gaps between kept tokens (tiny chunks): join two
        last = lengths.pop()
        lengths[-1] += last
    rng.shuffle(lengths)
    gaps = sorted(rng.sample(range(kept + 1), len(lengths)))  # span i goes before kept token gaps[i]
    spans, shift = [], 0
    for gap, length in zip(gaps, lengths, strict=True):
        spans.append((gap + shift, length))
        shift += length
    return spans


def text_infilling(ids: list[int], mask_id: int, rng: random.Random, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0) -> list[int]:
    """BART's text infilling: ids -> the noised input (each span one <mask>)."""
    out, pos = [], 0
    for start, length in infill_spans(len(ids), mask_ratio, poisson_lambda, rng):
        out += [*ids[pos:start], mask_id]
        pos = start + length
    return out + ids[pos:]


def bart_noise(sentences: list[list[int]], mask_id: int, rng: random.Random, mask_ratio: float = 0.3,
               poisson_lambda: float = 3.0, permute: bool = True) -> tuple[list[int], list[int]]:
    """BART's objective over a chunk of sentences -> (input: sentences permuted, then infilled; target: the chunk
    as it was)."""
    order = list(range(len(sentences)))
    if permute:
        rng.shuffle(order)
    shuffled = [t for i in order for t in sentences[i]]
    return text_infilling(shuffled, mask_id, rng, mask_ratio, poisson_lambda), [t for s in sentences for t in s]


def _poisson(lam: float, rng: random.Random) -> int:
    """A Poisson(lam) draw (Knuth's method; lam is small)."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def chunk_lines(lines: list[tuple[int, list[int]]], max_tokens: int) -> list[tuple[int, list[list[int]]]]:
    """Consecutive encoded lines (line number, ids) packed into chunks of at most max_tokens tokens -> (first
    line number, the chunk's lines: its sentences); a line longer than max_tokens is cut into pieces of
    max_tokens, each its own chunk. Empty lines are left out (the caller counts them)."""
    chunks, cur, first, size = [], [], 0, 0
    for line, ids in lines:
        if not ids:
            continue
        if size + len(ids) > max_tokens and cur:
            chunks.append((first, cur))
            cur, size = [], 0
        if len(ids) > max_tokens:
            chunks += [(line, [ids[i:i + max_tokens]]) for i in range(0, len(ids), max_tokens)]
            continue
        if not cur:
            first = line
        cur.append(ids)
        size += len(ids)
    if cur:
        chunks.append((first, cur))
    return chunks
