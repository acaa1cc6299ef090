"""Reranking an n-best list with other models, for example a right-to-left model (`data.tgt_reverse`) that sees
each candidate from its end (Liu et al. 2016; Sennrich et al. 2016).

Each candidate y of the n-best list of x gets

    (w_0 log P_0(y | x) + w_1 log P_1(y | x) + ...) / ((5 + |y| + 1) / 6) ** alpha

where P_0 is the model that searched (its beam score) and P_1... the rescorers, which read x and y as text with
their own tokenizers (so their vocabularies and direction may differ), scored by forced decoding through the
model protocol, or by their own `score_texts` (a TextScorer: crossway.graphone's joint log P(x, y), which ranks
one x's candidates as log P(y | x) would). alpha is the decoding length penalty (GNMT; |y| + 1 counts eos). The
candidates are re-sorted by that score, finished ones first (as beam search ranks them, so weights 1, 0, ... keep
the beam's order); each one's `score` becomes the weighted sum of log-probabilities.

With `pools` (decode.rescore_union: each rescorer's own n-best lists), the candidates of every list join the
searching model's (one copy per text), and every candidate is scored by every model (forced decoding, or its
`score_texts`), the searching model included: agreement between a left-to-right and a right-to-left model picks
from both lists. With `mbr` (decode.rescore_mbr), the candidate of least expected edit distance wins instead (see
`choose`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from crossway.decoding.common import DecodeConfig, length_penalty
from crossway.decoding.score import sequence_scores
from crossway.errors import ConfigError
from crossway.graphone import is_graphone, load_graphone
from crossway.metrics import edit_distance
from crossway.training.checkpoint import LoadedModel, load_checkpoint

if TYPE_CHECKING:  # (crossway.inference calls rerank)
    from crossway.inference import Translation


@runtime_checkable
class TextScorer(Protocol):
    """A rescorer that reads text itself and cannot search (crossway.graphone.GraphoneModel)."""

    def score_texts(self, sources: Sequence[str], outputs: Sequence[str]) -> list[float]: ...


Rescorer: TypeAlias = LoadedModel | TextScorer


def load_rescorer(path: str | Path, checkpoint: str = "best") -> Rescorer:
    """A rescorer from its directory: a graphone model (crossway graphone) or a run (its `checkpoint`)."""
    return load_graphone(path) if is_graphone(path) else load_checkpoint(path, checkpoint)


def check_rerank(cfg: DecodeConfig, rescorers: Sequence[Rescorer | str]) -> None:
    """Rescorers (loaded, or their paths) need an n-best list to choose from: beam search with n_best > 1."""
    if rescorers and (cfg.strategy != "beam" or cfg.n_best < 2):
        raise ConfigError("reranking needs an n-best list: decode.strategy=beam and decode.n_best of 2 or more "
                          f"(got strategy {cfg.strategy!r}, n_best {cfg.n_best})")


def rerank(outs: list[Translation], sources: list[str], rescorers: Sequence[Rescorer],
           weights: Sequence[float] | None = None, alpha: float = 1.0, max_tokens: int = 4000,
           pools: Sequence[list[Translation]] = (), searcher: LoadedModel | None = None,
           mbr: float = 0.0) -> list[Translation]:
    """`outs` (with their n-best lists as `alternatives`) for `sources`, reranked: weights[0] is the searching
    model's, then one per rescorer (default: all 1). `pools`: more n-best outputs for the same sources whose
    candidates join `outs`'; they need the `searcher` (the model behind `outs`) to score them. `mbr`: see
    `choose`."""
    weights = list(weights) if weights is not None else [1.0] * (1 + len(rescorers))
    if len(weights) != 1 + len(rescorers):
        raise ConfigError(f"rerank: {len(weights)} weights for {1 + len(rescorers)} models (the searching model "
                          "first, then each rescorer)")
    return choose(outs, candidate_scores(outs, sources, rescorers, max_tokens, pools, searcher), weights, alpha, mbr)


Scored: TypeAlias = "list[list[tuple[Translation, list[float]]]]"  # per source: (candidate, log P of each model)


def candidate_scores(outs: list[Translation], sources: list[str], rescorers: Sequence[Rescorer],
                     max_tokens: int = 4000, pools: Sequence[list[Translation]] = (),
                     searcher: LoadedModel | None = None) -> Scored:
    """Every candidate of each source with its log-probability under the searching model (its beam score, or
    forced decoding when there are `pools`) and under each rescorer: computed once, so weights and the length
    penalty can then be tried cheaply with `choose` (bench/rerank.py tunes them on a validation set)."""
    if len(outs) != len(sources):
        raise ConfigError(f"rerank: {len(outs)} outputs for {len(sources)} sources")
    if pools and searcher is None:
        raise ConfigError("rerank: pooled n-best lists need the searching model to score them")
    cands = [_candidates([o, *(p[i] for p in pools)]) for i, o in enumerate(outs)]
    flat = [(i, c) for i, cs in enumerate(cands) for c in cs]
    logp: list[list[float]] = [[] if pools else [c.score] for _, c in flat]
    for r in [searcher, *rescorers] if pools else rescorers:
        for k, s in enumerate(_scores(r, [sources[i] for i, _ in flat], [c.text for _, c in flat], max_tokens)):
            logp[k].append(s)
    scored: Scored = [[] for _ in outs]
    for k, (i, c) in enumerate(flat):
        scored[i].append((c, logp[k]))
    return scored


def _scores(r: Rescorer, sources: list[str], outputs: list[str], max_tokens: int) -> list[float]:
    """log P(output | source) by forced decoding through the model protocol, or a model's own `score_texts`
    (crossway.graphone, whose joint log P(source, output) ranks one source's candidates alike)."""
    if isinstance(r, TextScorer):
        return list(r.score_texts(sources, outputs))
    pairs = [(r.src.encode(s), r.tgt.encode(o)) for s, o in zip(sources, outputs, strict=True)]
    return sequence_scores(r.model, pairs, max_tokens, r.src)


def choose(outs: list[Translation], scored: Scored, weights: Sequence[float], alpha: float,
           mbr: float = 0.0) -> list[Translation]:
    """Each source's best candidate by sum_i weights[i] * log P_i / length penalty (finished ones first), its
    `score` the weighted sum and the rest of its candidates as `alternatives`; `outs` where there is none.

    mbr > 0: minimum Bayes risk instead (Kumar & Byrne 2004): the candidate with the least expected token edit
    distance to the list, each candidate weighted by its posterior, softmax(weighted sum / mbr) over the list;
    small values approach the best score, large ones a consensus (favouring what most candidates agree on)."""
    result = []
    for o, cs in zip(outs, scored, strict=True):
        if not cs:
            result.append(o)
            continue
        order, totals = _rank(cs, weights, alpha, mbr, None)
        ranked = [dataclasses.replace(cs[k][0], score=totals[k], alternatives=[]) for k in order]
        ranked[0].alternatives = ranked[1:]
        result.append(ranked[0])
    return result


def picks(scored: Scored, weights: Sequence[float], alpha: float, mbr: float = 0.0,
          dists: Sequence[list[list[int]]] | None = None) -> list[int | None]:
    """What `choose` would pick, as an index into each source's candidates (None: no candidate), without
    building the results: for trying many weights on the same lists (`dists`: `edit_distances(scored)`, computed
    once for every MBR setting)."""
    return [_rank(cs, weights, alpha, mbr, dists[i] if dists is not None else None)[0][0] if cs else None
            for i, cs in enumerate(scored)]


def edit_distances(scored: Scored) -> list[list[list[int]]]:
    """Per source, the token edit distance between every two of its candidates (symmetric, zero diagonal)."""
    out = []
    for cs in scored:
        n = len(cs)
        dist = [[0] * n for _ in range(n)]
        for a in range(n):  # each pair once
            for b in range(a + 1, n):
                dist[a][b] = dist[b][a] = edit_distance(cs[a][0].tokens, cs[b][0].tokens)
        out.append(dist)
    return out


def _rank(cs: list[tuple[Translation, list[float]]], weights: Sequence[float], alpha: float, mbr: float,
          dist: list[list[int]] | None) -> tuple[list[int], list[float]]:
    """One source's candidates best first (as beam search ranks: finished first), and their weighted sums."""
    totals = [sum(w * x for w, x in zip(weights, lp, strict=True)) for _, lp in cs]
    keys: list = [t / length_penalty(len(c.tokens) + 1, alpha) for (c, _), t in zip(cs, totals, strict=True)]
    if mbr > 0:
        if dist is None:
            dist = edit_distances([cs])[0]
        top = max(totals)
        post = [math.exp((t - top) / mbr) for t in totals]
        risks = [sum(p * d for p, d in zip(post, row, strict=True)) for row in dist]
        keys = [(-r / sum(post), k) for r, k in zip(risks, keys, strict=True)]  # ties: by score
    order = sorted(range(len(cs)), key=lambda k: (cs[k][0].finished, keys[k]), reverse=True)
    return order, totals


def _candidates(nbests: list[Translation]) -> list[Translation]:
    """The candidates of one source's n-best lists, one per text, in order (an empty input has none)."""
    seen: dict[str, Translation] = {}
    for o in nbests:
        for c in [o, *o.alternatives] if o.tokens or o.alternatives else []:
            seen.setdefault(c.text, c)
    return list(seen.values())
