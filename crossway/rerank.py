"""Reranking an n-best list with other models, for example a right-to-left model (`data.tgt_reverse`) that sees
each candidate from its end (Liu et al. 2016; Sennrich et al. 2016).

Each candidate y of the n-best list of x gets

    (w_0 log P_0(y | x) + w_1 log P_1(y | x) + ...) / ((5 + |y| + 1) / 6) ** alpha

where P_0 is the model that searched (its beam score) and P_1... the rescorers, which read x and y as text with
their own tokenizers (so their vocabularies and direction may differ), scored by forced decoding through the
model protocol. alpha is the decoding length penalty (GNMT; |y| + 1 counts eos). The candidates are re-sorted
by that score, finished ones first (as beam search ranks them, so weights 1, 0, ... keep the beam's order);
each one's `score` becomes the weighted sum of log-probabilities.

With `pools` (decode.rescore_union: each rescorer's own n-best lists), the candidates of every list join the
searching model's (one copy per text), and every candidate is scored by every model by forced decoding, the
searching model included: agreement between a left-to-right and a right-to-left model picks from both lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossway.decoding.common import DecodeConfig, length_penalty
from crossway.decoding.score import sequence_scores
from crossway.errors import ConfigError

if TYPE_CHECKING:  # (crossway.inference calls rerank)
    from crossway.inference import Translation
    from crossway.training.checkpoint import LoadedModel


def check_rerank(cfg: DecodeConfig, rescorers: Sequence[LoadedModel]) -> None:
    """Rescorers need an n-best list to choose from: beam search with n_best > 1."""
    if rescorers and (cfg.strategy != "beam" or cfg.n_best < 2):
        raise ConfigError("reranking needs an n-best list: decode.strategy=beam and decode.n_best of 2 or more "
                          f"(got strategy {cfg.strategy!r}, n_best {cfg.n_best})")


def rerank(outs: list[Translation], sources: list[str], rescorers: Sequence[LoadedModel],
           weights: Sequence[float] | None = None, alpha: float = 1.0, max_tokens: int = 4000,
           pools: Sequence[list[Translation]] = (), searcher: LoadedModel | None = None) -> list[Translation]:
    """`outs` (with their n-best lists as `alternatives`) for `sources`, reranked: weights[0] is the searching
    model's, then one per rescorer (default: all 1). `pools`: more n-best outputs for the same sources whose
    candidates join `outs`'; they need the `searcher` (the model behind `outs`) to score them."""
    weights = list(weights) if weights is not None else [1.0] * (1 + len(rescorers))
    if len(weights) != 1 + len(rescorers):
        raise ConfigError(f"rerank: {len(weights)} weights for {1 + len(rescorers)} models (the searching model "
                          "first, then each rescorer)")
    if len(outs) != len(sources):
        raise ConfigError(f"rerank: {len(outs)} outputs for {len(sources)} sources")
    if pools and searcher is None:
        raise ConfigError("rerank: pooled n-best lists need the searching model to score them")
    cands = [_candidates([o, *(p[i] for p in pools)]) for i, o in enumerate(outs)]
    flat = [(i, c) for i, cs in enumerate(cands) for c in cs]
    scorers = list(zip(weights[1:], rescorers, strict=True))
    if pools:
        total = [0.0] * len(flat)
        scorers.insert(0, (weights[0], searcher))
    else:
        total = [weights[0] * c.score for _, c in flat]
    for w, r in scorers:
        pairs = [(r.src.encode(sources[i]), r.tgt.encode(c.text)) for i, c in flat]
        for k, s in enumerate(sequence_scores(r.model, pairs, max_tokens)):
            total[k] += w * s
    ranked: list[list[tuple[float, Translation]]] = [[] for _ in outs]
    for k, (i, c) in enumerate(flat):
        key = total[k] / length_penalty(len(c.tokens) + 1, alpha)
        ranked[i].append((key, dataclasses.replace(c, score=total[k], alternatives=[])))
    result = []
    for o, rs in zip(outs, ranked, strict=True):
        if not rs:
            result.append(o)
            continue
        rs.sort(key=lambda kc: (not kc[1].finished, -kc[0]))  # as beam search ranks: finished ones first
        best = rs[0][1]
        best.alternatives = [c for _, c in rs[1:]]
        result.append(best)
    return result


def _candidates(nbests: list[Translation]) -> list[Translation]:
    """The candidates of one source's n-best lists, one per text, in order (an empty input has none)."""
    seen: dict[str, Translation] = {}
    for o in nbests:
        for c in [o, *o.alternatives] if o.tokens or o.alternatives else []:
            seen.setdefault(c.text, c)
    return list(seen.values())
