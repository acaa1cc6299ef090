"""Greedy and sampling search: one token per sentence per step through `decode_step`.

B rows still being decoded (shrinks as sentences finish), S source length, V vocabulary, t steps so far.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossway.data.tokenizers import BOS_ID, EOS_ID
from crossway.decoding.common import (
    DecodeConfig,
    Hypothesis,
    Processor,
    max_lengths,
    memory_lengths,
    step_log_probs,
    top_log_probs,
)
from crossway.models.interface import Seq2Seq, select_batch, target_limits


def filter_top_k_top_p(logp: Tensor, top_k: int, top_p: float) -> Tensor:
    """Keep the k most probable tokens and the smallest set whose probability reaches p; -inf elsewhere."""
    if top_k > 0:
        kth = logp.topk(min(top_k, logp.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_logp.softmax(-1).cumsum(-1)
        drop = cum - sorted_logp.softmax(-1) >= top_p  # mass before this token already reaches p
        logp = logp.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logp


def sample_tokens(logp: Tensor, cfg: DecodeConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) log-probs -> (B,) next tokens sampled from the tempered, filtered distribution."""
    probs = filter_top_k_top_p(logp / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def greedy_search(model: Seq2Seq, src: Tensor, src_mask: Tensor, cfg: DecodeConfig,
                  processors: list[Processor] = ()) -> list[Hypothesis]:
    """Argmax (or sampled, with strategy="sample") decoding of a padded batch: src (B, S) -> one hypothesis
    per row. Finished rows leave the batch (memory and state narrowed with `select_batch`), so later steps
    cost only what is still being decoded and no row depends on another."""
    B, device = src.size(0), src.device
    memory = model.encode(src, src_mask)
    lengths = memory_lengths(memory)
    limits = max_lengths(lengths, cfg, target_limits(model, memory))
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.strategy == "sample" else None
    active = torch.arange(B)
    tokens = torch.empty(B, 0, dtype=torch.long, device=device)  # (B, t) output so far, for processors
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=device)
    state = None
    steps: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []  # (rows, tokens, logprobs, attention)
    for t in range(int(limits.max())):
        logits, state = model.decode_step(prev, memory, state, attention=cfg.return_attention)
        last = t + 1 >= limits[active]
        if generator is not None:
            logp = step_log_probs(logits, tokens, cfg, processors, last)
            tok = sample_tokens(logp, cfg, generator)  # (B,)
            tok_logp = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        else:  # argmax, without the (B, V) log-probabilities
            tok_logp, tok = (x.squeeze(1) for x in top_log_probs(logits, tokens, cfg, processors, 1, last))
        attn = state.get("attn") if cfg.return_attention else None
        steps.append((active, tok.cpu(), tok_logp.cpu(), None if attn is None else attn.float().cpu()))
        done = (tok == EOS_ID).cpu() | last
        if bool(done.all()):
            break
        tokens = torch.cat([tokens, tok.unsqueeze(1)], 1)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            active = active[keep]
            keep = keep.to(device)
            memory, state = select_batch(memory, keep), select_batch(state, keep)
            tok, tokens = tok[keep], tokens[keep]
        prev = tok
    return _collect(B, steps, lengths)


def _collect(B: int, steps, lengths: Tensor) -> list[Hypothesis]:
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
    for h, a, n in zip(hyps, attns, lengths.tolist(), strict=True):
        if a:
            h.attention = torch.stack(a)[..., :n]  # the row's real memory positions
    return hyps
