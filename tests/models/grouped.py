"""Protocol checks shared by the model tests: G decoding rows per memory row (beam search's beams) give what memory
repeated G times gives; a state reordered and narrowed with select_batch decodes as the rows it came from."""

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


def assert_state_reorders(model, src, mask, tgt_in) -> None:
    """Two steps, then rows (2, 0) of memory and state: the third step's logits are those rows' logits."""
    memory = model.encode(src, mask)
    _, state = model.decode_step(tgt_in[:, 0], memory, None)
    _, state = model.decode_step(tgt_in[:, 1], memory, state)
    idx = torch.tensor([2, 0])
    logits, _ = model.decode_step(tgt_in[idx, 2], select_batch(memory, idx), select_batch(state, idx))
    ref, _ = model.decode_step(tgt_in[:, 2], memory, state)
    assert (logits - ref[idx]).abs().max() <= 1e-6
