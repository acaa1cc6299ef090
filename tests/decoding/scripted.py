"""A hand-scripted model: next-token probabilities (and, optionally, attention) are looked up by the prefix
produced so far."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossway.data.tokenizers import EOS_ID


class ScriptedModel(nn.Module):
    """`attention`: prefix -> the weights over the source positions of the step that follows that prefix (0 for
    an unlisted prefix), returned as state["attn"] (B, M), or with `heads` > 0 as (B, heads, M): the weights x
    (0.5, 1.5, 0.5, 1.5, ...), whose mean over heads is the weights."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], vocab: int = 8,
                 attention: dict[tuple[int, ...], list[float]] | None = None, heads: int = 0):
        super().__init__()
        self.table, self.vocab, self.attention, self.heads = table, vocab, attention, heads
        self.dummy = nn.Parameter(torch.zeros(1))
        self.asked: list[bool] = []  # the `attention` argument of every decode_step call

    def encode(self, src: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        return {"mask": src_mask}

    def decode_step(self, prev: Tensor, memory, state, attention: bool = False):
        self.asked.append(attention)
        hist = prev[:, None] if state is None else torch.cat([state["hist"], prev[:, None]], 1)
        logits = torch.full((prev.size(0), self.vocab), -1e9)
        prefixes = [tuple(seq) for seq in hist[:, 1:].tolist()]
        for r, seq in enumerate(prefixes):
            for tok, p in self.table.get(seq, {EOS_ID: 1.0}).items():
                logits[r, tok] = math.log(p)
        new = {"hist": hist}
        if self.attention is not None:
            attn = torch.zeros(prev.size(0), memory["mask"].size(1))  # (B, M)
            for r, seq in enumerate(prefixes):
                weights = self.attention.get(seq, [])
                attn[r, :len(weights)] = torch.tensor(weights)
            if self.heads:
                attn = attn.unsqueeze(1) * torch.tensor([0.5, 1.5] * (self.heads // 2)).view(1, -1, 1)
            new["attn"] = attn
        return logits, new
