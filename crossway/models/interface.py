"""The one protocol every sequence model satisfies; search, scoring and serving use nothing else.

B batch, S source length, M memory positions, T target length, V target vocabulary.

Sources: `src` is whatever the model's front-end reads, batch first and padded: token ids (B, S), feature frames
(B, S, F) or images (B, C, H, W); `src_mask` (bool, True = real) has the source's layout without its feature or
channel axis: (B, S) or (B, H, W). `encode` returns the memory, which always holds "mask" (B, M): the real
memory positions (tokens, frames, grid cells), real ones first in each row. Search reads nothing else of a
source: length limits are a * (real memory positions) + b, and returned attention is cut to them.

`memory` (from `encode`) and `state` (from `decode_step`) are dicts of tensors whose first dimension is the
batch. That single rule is what lets search stay architecture-agnostic: beams are reordered and finished
sentences dropped with `select_batch`, whatever the model keeps inside (an RNN hidden state, a key/value cache,
projected encoder keys).

Grouped rows: `decode_step` may decode G times as many rows as memory has (G = rows // memory rows); rows
g*G .. g*G + G - 1 decode against memory row g. Beam search passes one memory row per sentence and its K beams
as rows, so a source is stored and read once per step, not K times; greedy search and sampling use G = 1.

Position limits: a model whose decoder has a table of positions may say how many tokens each row can produce,
with the optional method `max_target_tokens(memory) -> (B,)` long on the CPU (eos included; the Transformer its
`max_positions`, a decoder-only model its `max_positions` less the row's source). Search stops a row there as it
does at a * memory + b: the hypothesis is returned unfinished. Models without the method have no such limit.

Attention: asked with `decode_step(..., attention=True)`, models that attend put the step's attention weights,
(B, S) or (B, heads, S) or (B, layers, heads, S), under `state["attn"]`; otherwise they may leave them out (the
Transformer then runs fused attention and keeps no weights). Search asks only when
`DecodeConfig.return_attention` is set, or beam search's `coverage_penalty`.

A state is consumed by the next `decode_step`, which may write into its tensors in place (the Transformer's
cache); keep a copy with `select_batch` to branch from one state twice. The logits `decode_step` returns belong
to the caller, which may change them in place (search masks them rather than copying (B, V) every step): a
model must not keep them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

Memory = dict[str, Tensor]
State = dict[str, Tensor]


@runtime_checkable
class Seq2Seq(Protocol):
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """src (B, S) ids, (B, S, F) frames or (B, C, H, W) images with their mask -> memory, batch-first
        tensors, memory["mask"] (B, M) among them."""
        ...

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """prev_tokens (B,) -> logits (B, V) for the next token and the new state (None before step 1);
        with attention=True the state also holds the step's attention weights under "attn"."""
        ...

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs tgt_in (B, T) that start with bos; with
        features=True the input (B, T, F) of `generator` instead, so logits = generator(features)."""
        ...

    generator: nn.Linear  # the output layer F -> V (training applies it inside the loss, a slice at a time)


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """A regularisation term that a model adds to its training loss, from its last teacher-forced pass, summed
    over the batch like the token losses (Show-Attend-Tell's doubly stochastic attention); None for models
    without one (an optional method of the protocol)."""
    term = getattr(model, "auxiliary_loss", None)
    return term() if term is not None else None


def target_limits(model: nn.Module, memory: Memory) -> Tensor | None:
    """(B,) the most tokens each memory row's output may have under the model's position table (eos included), or
    None for a model without one (an optional method of the protocol, `max_target_tokens`)."""
    limit = getattr(model, "max_target_tokens", None)
    return limit(memory) if limit is not None else None


def check_sizes(section: str, cfg, positive: tuple[str, ...], probabilities: tuple[str, ...]) -> None:
    """Config validation shared by model configs: sizes >= 1 and dropout-like values in [0, 1)."""
    for n in positive:
        if getattr(cfg, n) < 1:
            raise ValueError(f"{section}.{n} must be >= 1, got {getattr(cfg, n)}")
    for n in probabilities:
        if not 0 <= getattr(cfg, n) < 1:
            raise ValueError(f"{section}.{n} must be in [0, 1), got {getattr(cfg, n)}")


def select_batch(tree: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Rows `index` (long, (B',)) of every tensor in a memory or state dict: reorder, repeat or drop."""
    return {k: v.index_select(0, index) for k, v in tree.items()}
