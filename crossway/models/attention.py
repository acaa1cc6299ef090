"""Attention for RNN decoders: additive (Bahdanau et al. 2015) and multiplicative (Luong et al. 2015).

B batch, S source length, Q query size (decoder state), K key size (encoder output), A attention size.
Keys are projected once per source (`project_keys`, kept in the model's memory) and reused at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """scores (B, S), mask (B, S) bool (True = attend) -> weights (B, S) that sum to 1 over the mask."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def dot_scores(query: Tensor, keys: Tensor) -> Tensor:
    """query (B, K), keys (B, S, K) -> scores (B, S): q . k_j."""
    return torch.bmm(keys, query.unsqueeze(2)).squeeze(2)


def attend(weights: Tensor, values: Tensor) -> Tensor:
    """weights (B, S), values (B, S, K) -> context (B, K) = sum_j w_j v_j."""
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1)


class AdditiveAttention(nn.Module):
    """Bahdanau: score(s, h_j) = v . tanh(W s + U h_j)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W
        self.key_proj = nn.Linear(key_dim, attn_dim)  # U (and the bias)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)  # (B, S, A)

    def forward(self, query: Tensor, proj_keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Q), proj_keys (B, S, A), values (B, S, K) -> context (B, K), weights (B, S)."""
        scores = self.v(torch.tanh(proj_keys + self.query_proj(query).unsqueeze(1))).squeeze(2)  # (B, S)
        weights = masked_softmax(scores, mask)
        return attend(weights, values), weights


class LuongAttention(nn.Module):
    """Luong: score(s, h_j) = s . h_j ("dot", needs Q == K) or s . W h_j ("general")."""

    def __init__(self, query_dim: int, key_dim: int, score: str):
        super().__init__()
        if score not in ("dot", "general"):
            raise ValueError(f"Luong score must be 'dot' or 'general', not {score!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"dot attention needs equal query and key sizes ({query_dim} != {key_dim})")
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False) if score == "general" else None

    def project_keys(self, keys: Tensor) -> Tensor:
        return keys if self.key_proj is None else self.key_proj(keys)  # (B, S, Q)

    def forward(self, query: Tensor, proj_keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = masked_softmax(dot_scores(query, proj_keys), mask)  # (B, S)
        return attend(weights, values), weights
