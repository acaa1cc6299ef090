"""Length-bucketed batches under a token budget, and collation into padded tensors with masks.

B batch, S source length, T target length (including the bos or eos position).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from crossway.data.text import Example
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from crossway.errors import ConfigError

BUCKET_BATCHES = 50  # examples are sorted by length within windows of this many batches' worth


@dataclass
class Batch:
    src: Tensor  # (B, S) long, padded with PAD_ID
    src_mask: Tensor  # (B, S) bool, True at real tokens
    tgt_in: Tensor  # (B, T) long: bos + target
    tgt_out: Tensor  # (B, T) long: target + eos, PAD_ID where padded
    lines: list[int]  # file line of each example
    index: list[int]  # position of each example in its data set

    def __len__(self) -> int:
        return self.src.size(0)

    @property
    def num_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    @property
    def count(self) -> int:
        """Units of the loss normaliser (training.task.TaskBatch): target tokens, eos included."""
        return self.num_tgt_tokens

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        return Batch(self.src.to(device), self.src_mask.to(device), self.tgt_in.to(device), self.tgt_out.to(device),
                     self.lines, self.index)


def pad(seqs: Sequence[Sequence[int]], value: int = PAD_ID) -> Tensor:
    """Right-pad lists of ids into a (B, L) long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[Example], index: Sequence[int]) -> Batch:
    src = pad([e.src for e in examples])
    return Batch(
        src=src,
        src_mask=src != PAD_ID,
        tgt_in=pad([[BOS_ID, *e.tgt] for e in examples]),
        tgt_out=pad([[*e.tgt, EOS_ID] for e in examples]),
        lines=[e.line for e in examples],
        index=list(index),
    )


def example_cost(ex: Example) -> int:
    """Padded tokens one example occupies: its longer side, counting eos/bos."""
    return max(len(ex.src), len(ex.tgt) + 1)


def token_budget_batches(examples: Sequence[Example], max_tokens: int, shuffle: bool, seed: int = 0,
                         max_sentences: int | None = None) -> list[list[int]]:
    """Split example indices into batches whose padded size (rows x longest example) is <= max_tokens.

    With `shuffle`, examples are shuffled, sorted by length within windows of about BUCKET_BATCHES batches
    (so batches hold similar lengths and little padding), and the batch order is shuffled, all from `seed`.
    Without it, examples are sorted by length (for decoding) and batches come out shortest first.
    """
    costs = [example_cost(e) for e in examples]
    too_long = [i for i, c in enumerate(costs) if c > max_tokens]
    if too_long:
        i = too_long[0]
        raise ConfigError(f"batch budget max_tokens={max_tokens} is smaller than one example "
                          f"(line {examples[i].line} needs {costs[i]} tokens); raise train.max_tokens "
                          f"or lower data.max_src_len/max_tgt_len")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
        mean_cost = max(1, sum(costs) // max(1, len(costs)))
        window = max(1, BUCKET_BATCHES * max_tokens // mean_cost)
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w: w + window], key=lambda i: (costs[i], len(examples[i].src)))]
    else:
        order.sort(key=lambda i: (costs[i], len(examples[i].src)))
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, costs[i])
        full = max_sentences is not None and len(current) >= max_sentences
        if current and (new_longest * (len(current) + 1) > max_tokens or full):
            batches.append(current)
            current, new_longest = [], costs[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def budget_batches(costs: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Decoding batches of indices: sorted by cost, cut so that rows x largest cost <= max_tokens (an input
    costlier than the budget is a batch of its own)."""
    batches, current, largest = [], [], 0
    for i in sorted(range(len(costs)), key=costs.__getitem__):
        if current and max(largest, costs[i]) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, largest = [], 0
        current.append(i)
        largest = max(largest, costs[i])
    return batches + [current] if current else batches
