"""Search over the `encode` / `decode_step` protocol: greedy, sampling and beam search, with logit
processors. Nothing here knows which architecture it drives."""

from __future__ import annotations

from torch import Tensor

from crossway.decoding.beam import beam_search
from crossway.decoding.common import (
    DecodeConfig,
    Hypothesis,
    Processor,
    coverage_penalty,
    default_processors,
    length_penalty,
    no_repeat_ngram,
)
from crossway.decoding.greedy import filter_top_k_top_p, greedy_search
from crossway.errors import ConfigError
from crossway.models.interface import Seq2Seq


def decode(model: Seq2Seq, src: Tensor, src_mask: Tensor, cfg: DecodeConfig,
           processors: list[Processor] | None = None) -> list[list[Hypothesis]]:
    """The n-best hypotheses of each sentence (one for greedy and sampling) with cfg's strategy.
    `processors` default to those the config asks for (no-repeat n-gram); pass a list to add your own.
    A model that brings its own search engine (`search(src, src_mask, cfg)`, e.g. crossway.ct2.Ct2Model) runs
    the whole search itself, from the same options."""
    if hasattr(model, "search"):
        if processors is not None:
            raise ConfigError(f"{type(model).__name__} runs its own search: it takes no logit processors")
        return model.search(src, src_mask, cfg)
    procs = default_processors(cfg) if processors is None else processors
    if cfg.strategy == "beam":
        return beam_search(model, src, src_mask, cfg, procs)
    return [[h] for h in greedy_search(model, src, src_mask, cfg, procs)]


__all__ = ["DecodeConfig", "Hypothesis", "Processor", "beam_search", "coverage_penalty", "decode", "default_processors",
           "filter_top_k_top_p", "greedy_search", "length_penalty", "no_repeat_ngram"]
