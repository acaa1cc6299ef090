"""The pretraining objectives: T5 span corruption and BART text infilling with sentence permutation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from crossway.data.noising import (
    bart_noise,
    chunk_lines,
    infill_spans,
    noise_spans,
    span_corruption,
    text_infilling,
)

V = 1000
SENTINELS = [V - 1 - i for i in range(100)]  # <extra_id_0> is the last id, counting down
MASK = 900


def long_text(n: int = 20_000) -> list[int]:
    rng = random.Random(7)
    return [rng.randrange(4, 800) for _ in range(n)]


def test_span_corruption_statistics_on_a_long_text():
    ids = long_text()
    spans = noise_spans(len(ids), 0.15, 3.0, random.Random(1))
    masked = sum(length for _, length in spans)
    assert abs(masked / len(ids) - 0.15) <= 0.01
    assert abs(masked / len(spans) - 3.0) <= 0.2
    assert all(length >= 1 for _, length in spans)
    assert all(a + la < b for (a, la), (b, _) in zip(spans, spans[1:], strict=False))  # separated, in order
    assert spans[0][0] >= 1 and spans[-1][0] + spans[-1][1] == len(ids)  # non-noise first, ends with noise


def test_span_corruption_lengths_vary_around_the_mean():
    lengths = Counter(length for _, length in noise_spans(len(long_text()), 0.15, 3.0, random.Random(2)))
    assert len(lengths) >= 5  # random segmentation, not fixed-length spans


def test_sentinels_unique_in_order_and_targets_reconstruct_the_input():
    ids = long_text(600)
    inputs, targets = span_corruption(ids, SENTINELS, random.Random(3))
    used = [t for t in inputs if t in SENTINELS]
    assert used == SENTINELS[: len(used)] and len(set(used)) == len(used)  # <extra_id_0>, <extra_id_1>, ...
    assert [t for t in targets if t in SENTINELS] == used
    # every sentinel of the input replaced by what follows it in the target gives the text back
    fills, cur = {}, None
    for t in targets:
        if t in SENTINELS:
            cur = fills.setdefault(t, [])
        else:
            cur.append(t)
    rebuilt = [x for t in inputs for x in (fills[t] if t in SENTINELS else [t])]
    assert rebuilt == ids
    assert abs(len(targets) - len(used) - 0.15 * len(ids)) <= 1


def test_span_corruption_of_short_chunks_and_too_few_sentinels():
    inputs, targets = span_corruption([5, 6], SENTINELS, random.Random(0))
    assert inputs == [5, SENTINELS[0]] and targets == [SENTINELS[0], 6]
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(long_text(600), SENTINELS[:3], random.Random(0))
    with pytest.raises(ValueError, match="at least 2"):
        span_corruption([5], SENTINELS, random.Random(0))


def test_infilling_masks_the_ratio_in_poisson_spans():
    n, rng, lengths, masked = 200, random.Random(4), [], 0
    for _ in range(300):
        spans = infill_spans(n, 0.3, 3.0, rng)
        masked += sum(length for _, length in spans)
        assert sum(length for _, length in spans) == round(0.3 * n)
        ends = [s + length for s, length in spans]
        assert all(e < s2 for e, (s2, _) in zip(ends, spans[1:], strict=False))  # a kept token between spans
        lengths += [length for _, length in spans]
    mean = sum(lengths) / len(lengths)
    assert 2.6 <= mean <= 3.1  # Poisson(3), the last span of each chunk cut to fit
    assert 0 in lengths  # zero-length spans insert a mask


def test_infilling_one_mask_per_span_and_the_rest_kept_in_order():
    ids = list(range(10, 110))
    spans = infill_spans(len(ids), 0.3, 3.0, random.Random(5))
    noised = text_infilling(ids, MASK, random.Random(5))
    assert noised.count(MASK) == len(spans)
    assert [t for t in noised if t != MASK] == [t for i, t in enumerate(ids)
                                               if not any(s <= i < s + n for s, n in spans)]


def test_bart_permutes_sentences_and_targets_the_original():
    sentences = [list(range(100 * k, 100 * k + 8)) for k in range(1, 7)]
    inputs, target = bart_noise(sentences, MASK, random.Random(6), mask_ratio=0.3)
    assert target == [t for s in sentences for t in s]
    kept = [t for t in inputs if t != MASK]
    assert len(kept) == len(target) - round(0.3 * len(target))
    order = [t // 100 for t in kept]
    assert order != sorted(order)  # permuted (this seed)
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert len(runs) == len(set(runs))  # each sentence's kept tokens stay together
    same, _ = bart_noise(sentences, MASK, random.Random(6), mask_ratio=0.3)
    assert same == inputs  # a pure function of the random stream
    unpermuted, _ = bart_noise(sentences, MASK, random.Random(6), permute=False)
    assert [t for t in unpermuted if t != MASK] == sorted(t for t in unpermuted if t != MASK)


def test_chunks_pack_consecutive_lines():
    lines = [(1, [5] * 3), (2, []), (3, [6] * 4), (4, [7] * 10), (5, [8] * 2)]
    chunks = chunk_lines(lines, 8)
    assert chunks == [(1, [[5] * 3, [6] * 4]), (4, [[7] * 8]), (4, [[7] * 2]), (5, [[8] * 2])]
