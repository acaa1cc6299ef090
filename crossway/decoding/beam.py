"""Batched beam search over `decode_step`, with the GNMT length penalty, n-best output and early stopping.

Ba sentences still searching, K beam size, rows = Ba * K (sentence-major: row i*K + k), V vocabulary,
t steps so far. Memory keeps one row per sentence, shared by its K beams (the protocol's grouped rows); state,
tokens and scores are reordered every step with `select_batch`, and sentences that are done leave the batch.

Two rule sets (`DecodeConfig.beam_rules`), differing in how hypotheses are normalized, ranked and stopped:
  crossway  score / ((5 + |Y|) / 6) ** alpha; hypotheses that reach eos rank before those the length limit cut
            (which only fill the n-best list when too few reached eos); without early stopping a sentence ends
            when no live beam can beat the worst of its K best finished ones even at the length limit (exact
            for alpha >= 0).
  hf        Hugging Face generate(): score / |Y| ** alpha; at the length limit the K best candidates all finish,
            cut or not, and rank with the others by normalized score alone; without early stopping a sentence
            ends when the best live beam, normalized at its current length, cannot beat the worst of K finished
            (HF's early_stopping=False heuristic; early_stopping=True is the same under both rules).

Coverage penalty (`DecodeConfig.coverage_penalty` beta > 0, both rule sets): a finished hypothesis ranks by
normalized score + beta * sum_i log(min(sum_j p_ij, 1)) over its sentence's real memory positions i (Wu et al.
2016, eq. 14). Search asks every step for the model's attention (whatever its shape: (rows, M), (rows, heads, M),
(rows, layers, heads, M), averaged to (rows, M) by `mean_attention`), sums it per row and reorders the sums with
the rows like the tokens. A model that returns no attention is a ConfigError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossway.data.tokenizers import BOS_ID, EOS_ID
from crossway.decoding.common import (
    DecodeConfig,
    Hypothesis,
    Processor,
    coverage_penalty,
    length_penalty,
    max_lengths,
    mean_attention,
    memory_lengths,
    rank_hypotheses,
    top_log_probs,
    trim_attention,
)
from crossway.errors import ConfigError
from crossway.models.interface import Seq2Seq, select_batch, target_limits

NEG_INF = float("-inf")


@torch.inference_mode()
def beam_search(model: Seq2Seq, src: Tensor, src_mask: Tensor, cfg: DecodeConfig,
                processors: list[Processor] = ()) -> list[list[Hypothesis]]:
    """src (B, S) -> for each sentence its n-best hypotheses, best first by length-penalised score."""
    B, K, device = src.size(0), cfg.beam_size, src.device
    memory = model.encode(src, src_mask)  # one row per sentence, for its K rows
    lengths = memory_lengths(memory)
    limits = max_lengths(lengths, cfg, target_limits(model, memory))  # (B,)
    sent = torch.arange(B)  # original index of each active sentence
    scores = torch.full((B, K), NEG_INF, device=device)
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    tokens = torch.empty(B * K, 0, dtype=torch.long, device=device)  # (rows, t)
    history: Tensor | None = None  # (rows, t, ...) attention rows, when asked
    coverage = None  # beta > 0: (rows, M) attention summed over the steps so far, padding counted as covered
    beta = cfg.coverage_penalty
    prev = torch.full((B * K,), BOS_ID, dtype=torch.long, device=device)
    state = None
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(int(limits.max())):
        logits, state = model.decode_step(prev, memory, state, attention=cfg.return_attention or beta > 0)
        at_limit = t + 1 >= limits[sent]  # (Ba,)
        # each row's 2K best tokens hold every candidate that can be among its sentence's 2K best
        Ba, C = scores.size(0), min(2 * K, logits.size(-1))
        logp, ids = top_log_probs(logits, tokens, cfg, processors, C, last=at_limit.repeat_interleave(K))  # (rows, C)
        top_scores, top_idx = (scores.view(-1, 1) + logp).view(Ba, K * C).topk(2 * K, dim=1)  # (Ba, 2K)
        beam, tok = top_idx // C, ids.view(Ba, K * C).gather(1, top_idx)
        step_attn = state.get("attn").float() if cfg.return_attention and "attn" in state else None
        if beta > 0:
            coverage = _coverage(coverage, state, memory["mask"], K)  # this step included
        # eos among the K best candidates finishes a hypothesis (at most K of the 2K can be eos: one per beam);
        # under the hf rules, at the length limit the K best candidates all finish
        is_eos = tok == EOS_ID
        ends = is_eos | (at_limit.to(device).unsqueeze(1) if cfg.beam_rules == "hf" else False)
        fin = ends & (torch.arange(2 * K, device=device) < K) & top_scores.isfinite()
        for i, j in fin.nonzero().tolist():
            row = i * K + int(beam[i, j])
            attn = _attention(history, step_attn, row)
            score, eos = float(top_scores[i, j]), bool(is_eos[i, j])
            toks = tokens[row].tolist() + ([] if eos else [int(tok[i, j])])
            finished[int(sent[i])].append(Hypothesis(toks, score, eos, attn, _normalized(score, t, coverage, row,
                                                                                         cfg)))
        # the K best candidates that are not eos continue
        scores, order = top_scores.masked_fill(is_eos, NEG_INF).topk(K, dim=1)  # (Ba, K)
        rows = (torch.arange(Ba, device=device).unsqueeze(1) * K + beam.gather(1, order)).view(-1)
        next_tok = tok.gather(1, order).view(-1)
        tokens = torch.cat([tokens[rows], next_tok.unsqueeze(1)], 1)
        state = select_batch(state, rows)
        coverage = coverage[rows] if coverage is not None else None
        if step_attn is not None:
            history = torch.cat([history[rows], step_attn[rows].unsqueeze(1)], 1) if history is not None \
                else step_attn[rows].unsqueeze(1)
        done = _done(scores, finished, sent, limits, t, cfg)
        for i in done.nonzero().squeeze(1).tolist():
            if cfg.beam_rules == "crossway" and at_limit[i] and len(finished[int(sent[i])]) < cfg.n_best:
                _add_unfinished(finished[int(sent[i])], scores[i], tokens, history, coverage, i, K, t, cfg)
        if bool(done.all()):
            break
        prev = next_tok
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            keep_rows = (keep.to(device).unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
            sent, scores = sent[keep], scores[keep.to(device)]
            memory, state = select_batch(memory, keep.to(device)), select_batch(state, keep_rows)
            tokens, prev = tokens[keep_rows], prev[keep_rows]
            history = history[keep_rows] if history is not None else None
            coverage = coverage[keep_rows] if coverage is not None else None
    for f, n in zip(finished, lengths.tolist(), strict=True):
        trim_attention(f, n)  # the sentence's real memory positions
    return [rank_hypotheses(f, cfg.n_best, cfg.beam_rules) for f in finished]


def _attention(history: Tensor | None, step: Tensor | None, row: int) -> Tensor | None:
    if step is None:
        return None
    return step[row].unsqueeze(0) if history is None else torch.cat([history[row], step[row].unsqueeze(0)])


def _coverage(coverage: Tensor | None, state: dict[str, Tensor], mask: Tensor, K: int) -> Tensor:
    """The coverage so far (rows, M) plus this step's attention; the padding positions of each sentence (mask
    (Ba, M)) start at 1, covered, so they add log 1 = 0 to the penalty."""
    if "attn" not in state:
        raise ConfigError("decode.coverage_penalty > 0 needs a model that returns its attention weights "
                          "(state['attn'] from decode_step(..., attention=True)); this one returns none")
    attn = mean_attention(state["attn"])  # (rows, M)
    if coverage is None:
        coverage = (~mask).repeat_interleave(K, 0).to(attn.dtype)  # (rows, M): 1 at padding
    return coverage + attn


def _done(scores: Tensor, finished: list[list[Hypothesis]], sent: Tensor, limits: Tensor, t: int,
          cfg: DecodeConfig) -> Tensor:
    """(Ba,) bool: a sentence is done at its length limit, or once it has K finished hypotheses and
    (early stopping, or) no live beam can still beat the worst of its K best finished ones."""
    done = (t + 1 >= limits[sent]).clone()
    for i, s in enumerate(sent.tolist()):
        fin = finished[s]
        if done[i] or len(fin) < cfg.beam_size:
            continue
        if cfg.early_stopping:
            done[i] = True
            continue
        best_live = float(scores[i, 0])
        # a negative score divided by the largest penalty it could still get is its best possible value
        # (hf rules: HF's heuristic, the penalty at the current length); the coverage penalty is <= 0, so
        # leaving it out keeps the bound an upper bound on every continuation (still exact for alpha >= 0)
        bound = int(limits[s]) if cfg.length_penalty > 0 and cfg.beam_rules == "crossway" else t + 1
        lp = length_penalty(bound, cfg.length_penalty, cfg.beam_rules)
        worst_kept = sorted(h.normalized for h in fin)[-cfg.beam_size]
        done[i] = best_live / lp <= worst_kept
    return done.to(scores.device)


def _add_unfinished(fin: list[Hypothesis], scores: Tensor, tokens: Tensor, history: Tensor | None,
                    coverage: Tensor | None, i: int, K: int, t: int, cfg: DecodeConfig) -> None:
    """At the length limit, live beams fill the n-best list when too few hypotheses reached eos (`coverage`: the
    rows' attention sums (rows, M), when the coverage penalty is on)."""
    for k in range(K):
        score = float(scores[k])
        if score == NEG_INF:
            continue
        row = i * K + k
        attn = history[row] if history is not None else None
        fin.append(Hypothesis(tokens[row].tolist(), score, False, attn, _normalized(score, t, coverage, row, cfg)))


def _normalized(score: float, t: int, coverage: Tensor | None, row: int, cfg: DecodeConfig) -> float:
    """The score a hypothesis finishing at step t is ranked by: length-penalised, plus the coverage penalty of
    its row's attention sums (coverage (rows, M)) when that is on; computed only for the rows that finish."""
    normalized = score / length_penalty(t + 1, cfg.length_penalty, cfg.beam_rules)
    if coverage is not None:
        normalized += float(coverage_penalty(coverage[row], cfg.coverage_penalty))
    return normalized
