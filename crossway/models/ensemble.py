"""Several trained models decoding as one: the mean of their next-token probabilities (fairseq's and OpenNMT's
ensembles). The ensemble is itself a model of the protocol, so every search, scorer and server decodes it
unchanged; members may differ in architecture (an RNN and a Transformer) but share both vocabularies.

B batch, S source length, T target length, V target vocabulary, M members.

Memory and state are the members' dicts merged into one, each key prefixed with the member's index ("0.k0",
"1.h"): still one flat dict of batch-first tensors, so `select_batch` reorders and drops rows of every member.
The memory also keeps the protocol's "mask" (the first member's) unprefixed, for search's length limits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossway.models.interface import Memory, State, target_limits


def _merge(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {f"{j}.{k}": v for j, part in enumerate(parts) for k, v in part.items()}


def _part(tree: dict[str, Tensor], j: int) -> dict[str, Tensor]:
    prefix = f"{j}."
    return {k[len(prefix):]: v for k, v in tree.items() if k.startswith(prefix)}


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.generator = members[0].generator  # the protocol's attribute; an ensemble is not trained

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """The members' memories, and the first member's mask as the ensemble's (members read one source)."""
        parts = [m.encode(src, src_mask) for m in self.members]
        return {**_merge(parts), "mask": parts[0]["mask"]}

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """-> log of the members' mean probabilities (B, V), which serve as logits (their log-softmax is
        themselves), and the merged state; with attention=True, state["attn"] (B, S) is the members' attention
        averaged over members, layers and heads."""
        log_probs, states = [], []
        for j, m in enumerate(self.members):
            logits, s = m.decode_step(prev_tokens, _part(memory, j), None if state is None else _part(state, j),
                                      attention)
            log_probs.append(torch.log_softmax(logits.float(), dim=-1))
            states.append(s)
        new = _merge([{k: v for k, v in s.items() if k != "attn"} for s in states])
        if attention:
            B = prev_tokens.size(0)
            new["attn"] = torch.stack([s["attn"].reshape(B, -1, s["attn"].size(-1)).mean(1) for s in states]).mean(0)
        return _log_mean_exp(log_probs), new

    def max_target_tokens(self, memory: Memory) -> Tensor | None:
        """The tightest of the members' limits (None when no member has one)."""
        limits = [x for j, m in enumerate(self.members) if (x := target_limits(m, _part(memory, j))) is not None]
        return torch.stack(limits).amin(0) if limits else None

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        """Teacher-forced log mean probabilities (B, T, V); there are no shared features to return."""
        if features:
            raise ValueError("an ensemble has no single generator input (features=True); decode or score it instead")
        return _log_mean_exp([torch.log_softmax(m(src, src_mask, tgt_in).float(), dim=-1) for m in self.members])


def _log_mean_exp(log_probs: list[Tensor]) -> Tensor:
    """log((1/M) sum_j p_j), from M tensors of log-probabilities of one shape."""
    return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))
