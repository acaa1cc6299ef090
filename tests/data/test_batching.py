import random

import torch

from crossway.data.batching import collate, example_cost, token_budget_batches
from crossway.data.text import Example
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID


def examples(n=500, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 30) for _ in range(n)]
    return [Example([4] * n, [5] * max(1, n + rng.randint(-2, 2)), i + 1) for i, n in enumerate(lengths)]


def test_budget_respected_and_every_example_once():
    exs = examples()
    for shuffle in (True, False):
        batches = token_budget_batches(exs, max_tokens=200, shuffle=shuffle, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(len(exs)))
        for b in batches:
            assert len(b) * max(example_cost(exs[i]) for i in b) <= 200
            padded = collate([exs[i] for i in b], b)
            assert padded.src.numel() <= 200 and padded.tgt_out.numel() <= 200


def test_shuffle_is_seeded_and_buckets_reduce_padding():
    exs = examples(2000)
    a = token_budget_batches(exs, 300, shuffle=True, seed=1)
    assert a == token_budget_batches(exs, 300, shuffle=True, seed=1)
    assert a != token_budget_batches(exs, 300, shuffle=True, seed=2)
    real = sum(len(e.tgt) + 1 for e in exs)
    padded = sum(collate([exs[i] for i in b], b).tgt_out.numel() for b in a)
    assert padded < 1.15 * real  # unsorted batches of random lengths 1-30 would pad to about 1.9x


def test_max_sentences_caps_rows():
    assert max(len(b) for b in token_budget_batches(examples(), 10_000, False, max_sentences=7)) == 7


def test_collate_pads_and_masks():
    b = collate([Example([7, 8, 9], [4, 5], 1), Example([6], [4], 2)], [0, 1])
    assert b.src.tolist() == [[7, 8, 9], [6, PAD_ID, PAD_ID]]
    assert b.src_mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.tgt_in.tolist() == [[BOS_ID, 4, 5], [BOS_ID, 4, PAD_ID]]
    assert b.tgt_out.tolist() == [[4, 5, EOS_ID], [4, EOS_ID, PAD_ID]]
    assert b.num_tgt_tokens == 5 and b.lines == [1, 2] and b.src.dtype == torch.long


def test_example_larger_than_budget_is_an_error():
    import pytest

    from crossway.errors import ConfigError
    with pytest.raises(ConfigError, match="line 1 needs 50 tokens"):
        token_budget_batches([Example([4] * 50, [4], 1)], 40, shuffle=False)
