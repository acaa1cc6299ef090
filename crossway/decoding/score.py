"""Forced decoding: the log-probability a model gives to given outputs, through `encode` / `decode_step`.

B pairs in a batch, S source length, T target length (eos included), V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossway.data.batching import budget_batches, pad
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from crossway.models.interface import Seq2Seq


@torch.inference_mode()
def force_decode(model: Seq2Seq, src: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
    """src (B, S), tgt_in (B, T) = bos + target, tgt_out (B, T) = target + eos, padded with PAD_ID
    -> (B,) sum of log P(tgt_out[t] | src, tgt_in[:t+1]) over the real positions, one step at a time
    (the same steps, state and cache as search uses)."""
    memory, state = model.encode(src, src_mask), None
    total = torch.zeros(src.size(0), device=src.device)
    for t in range(tgt_in.size(1)):
        logits, state = model.decode_step(tgt_in[:, t], memory, state)  # (B, V)
        logp = logits.float().log_softmax(-1).gather(1, tgt_out[:, t:t + 1]).squeeze(1)
        total += logp.masked_fill(tgt_out[:, t] == PAD_ID, 0.0)
    return total


def sequence_scores(model: Seq2Seq, pairs: list[tuple], max_tokens: int = 4000, src=None) -> list[float]:
    """log P(target + eos | source) for each (source, target ids) pair, batched by `max_tokens`. Sources are
    source ids, or with `src` (a source codec: TextCodec, ImageFormat) what its `encode` made, collated by it."""
    device = next(model.parameters()).device
    model.eval()
    out = [0.0] * len(pairs)
    costs = [max(src.cost(s) if src is not None else len(s), len(t) + 1) for s, t in pairs]
    for index in budget_batches(costs, max_tokens):
        sources = [pairs[i][0] for i in index]
        x, mask = src.collate(sources) if src is not None else (pad(sources), pad(sources) != PAD_ID)
        tgt_in = pad([[BOS_ID, *pairs[i][1]] for i in index])
        tgt_out = pad([[*pairs[i][1], EOS_ID] for i in index])
        scores = force_decode(model, x.to(device), mask.to(device), tgt_in.to(device), tgt_out.to(device))
        for i, s in zip(index, scores.tolist(), strict=True):
            out[i] = s
    return out
