"""Batched greedy decoding through `decode_step`.

B batch (shrinks as sentences finish), S source length, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from crossway.data.tokenizers import BOS_ID, EOS_ID
from crossway.models.interface import Seq2Seq, select_batch


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    max_len_a: float = 2.0  # a sentence stops after at most a * source_length + b tokens
    max_len_b: int = 10
    max_tokens: int = 4000  # token budget of one decoding batch (sources are sorted by length)
    return_attention: bool = False


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos; ends before eos
    score: float  # sum of log-probabilities, eos included when it was produced
    finished: bool  # False when the length limit stopped it before eos
    attention: Tensor | None = None  # (T, ...) one row per produced token (eos included), when asked


@torch.inference_mode()
def greedy_search(model: Seq2Seq, src: Tensor, src_mask: Tensor, cfg: DecodeConfig) -> list[Hypothesis]:
    """Argmax decoding of a padded batch: src (B, S), src_mask (B, S) -> one hypothesis per row.

    Finished rows are removed from the batch (memory and state are narrowed with `select_batch`), so later
    steps cost only what is still being decoded, and no row ever depends on another.
    """
    B = src.size(0)
    memory = model.encode(src, src_mask)
    limits = (src_mask.sum(1).float() * cfg.max_len_a).long() + cfg.max_len_b  # (B,)
    active = torch.arange(B)
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=src.device)
    state = None
    steps: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []  # (rows, tokens, logprobs, attention)
    for t in range(int(limits.max())):
        logits, state = model.decode_step(prev, memory, state)
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = logp.argmax(-1)  # (B,)
        attn = state.get("attn") if cfg.return_attention else None
        steps.append((active, tok.cpu(), logp.gather(1, tok.unsqueeze(1)).squeeze(1).cpu(),
                      None if attn is None else attn.float().cpu()))
        done = (tok == EOS_ID).cpu() | (t + 1 >= limits[active])
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            active = active[keep]
            keep = keep.to(src.device)
            memory, state, tok = select_batch(memory, keep), select_batch(state, keep), tok[keep]
        prev = tok
    return _collect(B, steps)


def _collect(B: int, steps) -> list[Hypothesis]:
    hyps = [Hypothesis([], 0.0, False, None) for _ in range(B)]
    attns: list[list[Tensor]] = [[] for _ in range(B)]
    for rows, toks, logps, attn in steps:
        for j, (r, tok, lp) in enumerate(zip(rows.tolist(), toks.tolist(), logps.tolist(), strict=True)):
            h = hyps[r]
            h.score += lp
            if attn is not None:
                attns[r].append(attn[j])
            if tok == EOS_ID:
                h.finished = True
            else:
                h.tokens.append(tok)
    for h, a in zip(hyps, attns, strict=True):
        if a:
            h.attention = torch.stack(a)
    return hyps
