"""Shared check: G decoding rows per memory row (beam search's beams) give what memory repeated G times gives."""

from __future__ import annotations

import torch

from crossway.models.interface import select_batch


def grouped_and_repeated_steps(model, src, mask, G: int = 3, **step_kw):
    """Decode 4 steps of random tokens both ways. -> (memory, prev tokens (n*G, 4), [(logits grouped, logits
    repeated, state grouped, state repeated) per step])."""
    memory = model.encode(src, mask)
    n = src.size(0)
    repeated = select_batch(memory, torch.arange(n).repeat_interleave(G))
    prev = torch.cat([torch.ones(n * G, 1, dtype=torch.long), torch.randint(4, 13, (n * G, 3))], 1)
    grouped = expanded = None
    steps = []
    for t in range(prev.size(1)):
        a, grouped = model.decode_step(prev[:, t], memory, grouped, **step_kw)
        b, expanded = model.decode_step(prev[:, t], repeated, expanded, **step_kw)
        steps.append((a, b, grouped, expanded))
    return memory, prev, steps
