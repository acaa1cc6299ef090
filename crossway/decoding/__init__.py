"""Search over the `encode` / `decode_step` protocol. Nothing here knows which architecture it drives."""

from crossway.decoding.greedy import DecodeConfig, Hypothesis, greedy_search

__all__ = ["DecodeConfig", "Hypothesis", "greedy_search"]
