"""Attention: additive (Bahdanau et al. 2015) and multiplicative (Luong et al. 2015) for RNN decoders, and
multi-head scaled dot-product attention (Vaswani et al. 2017) for the Transformer.

B batch, S source length, Q query size (decoder state), K key size (encoder output), A attention size.
Keys are projected once per source (`project_keys`, kept in the model's memory) and reused at every step.
The RNN attention modules take R = B x G queries for B sources: consecutive groups of G queries (the beams of one
sentence in beam search) attend over the same source, which is stored once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """scores (B, S) or (B, G, S), mask (B, S) bool (True = attend) -> weights that sum to 1 over the mask."""
    mask = mask if scores.dim() == 2 else mask.unsqueeze(1)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def dot_scores(query: Tensor, keys: Tensor) -> Tensor:
    """query (B, K) or (B, G, K), keys (B, S, K) -> scores (B, S) or (B, G, S): q . k_j."""
    B, S, K = keys.shape
    return torch.bmm(query.reshape(B, -1, K), keys.transpose(1, 2)).view(*query.shape[:-1], S)


def attend(weights: Tensor, values: Tensor) -> Tensor:
    """weights (B, S) or (B, G, S), values (B, S, K) -> context (B, K) or (B, G, K) = sum_j w_j v_j."""
    B, S, K = values.shape
    return torch.bmm(weights.reshape(B, -1, S), values).view(*weights.shape[:-1], K)


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
        """query (R, Q), proj_keys (B, S, A), values (B, S, K) -> context (R, K), weights (R, S)."""
        B, S, A = proj_keys.shape
        q = self.query_proj(query).view(B, -1, 1, A)  # (B, G, 1, A)
        weights = masked_softmax(self.v(torch.tanh(proj_keys.unsqueeze(1) + q)).squeeze(3), mask)  # (B, G, S)
        return attend(weights, values).flatten(0, 1), weights.flatten(0, 1)


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
        """query (R, Q), proj_keys (B, S, Q), values (B, S, K) -> context (R, K), weights (R, S)."""
        B = proj_keys.size(0)
        weights = masked_softmax(dot_scores(query.view(B, -1, query.size(-1)), proj_keys), mask)  # (B, G, S)
        return attend(weights, values).flatten(0, 1), weights.flatten(0, 1)


def _fp32_attention(q: Tensor) -> bool:
    """Training under CPU autocast: PyTorch's fused CPU attention is about 7x slower backwards in bfloat16 than
    in float32 (measured, torch 2.13, 3+3 layer Bible model: 2.4 s vs 0.3 s over 5 steps), while the attention
    products are a small part of the work; so it runs in float32 there."""
    return q.device.type == "cpu" and q.requires_grad and torch.is_autocast_enabled("cpu")


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads (Vaswani et al. 2017), self or cross.

    B batch, T query length, S key length, D model size, H heads, Dh head size (D / H unless given: T5's d_kv;
    H * Dh may differ from D). Keys and values are projected by `project_kv` so a caller can compute them once
    (cross-attention) or grow them one position at a time (the self-attention cache). Without weights requested,
    PyTorch's fused scaled_dot_product_attention runs; with them, the same product is computed explicitly. A
    float `bias` (T5's relative positions) is added to the scores; `scale=False` leaves out the 1 / sqrt(Dh)
    (T5 folds it into its initialisation).
    """

    def __init__(self, d_model: int, heads: int, dropout: float, bias: bool = True, head_dim: int = 0,
                 scale: bool = True):
        super().__init__()
        if not head_dim and d_model % heads:
            raise ValueError(f"model size {d_model} is not divisible by {heads} heads")
        self.heads, self.dh, self.dropout = heads, head_dim or d_model // heads, dropout
        self.scale = None if scale else 1.0  # None: scaled_dot_product_attention's own 1 / sqrt(Dh)
        inner = heads * self.dh
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def split(self, x: Tensor) -> Tensor:
        """(B, L, H * Dh) -> (B, H, L, Dh), a view."""
        B, L, _ = x.shape
        return x.view(B, L, self.heads, self.dh).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, S, D) -> keys, values (B, H, S, Dh)."""
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                need_weights: bool = False, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) queries; k, v (B, H, S, Dh); mask broadcastable to (B, H, T, S), True = attend; bias
        broadcastable to (B, H, T, S), added to the scores.

        -> output (B, T, D) and, when asked, weights (B, H, T, S)."""
        out, weights = self.attend(self.split(self.q_proj(x)), k, v, mask, need_weights, bias)
        return self.out_proj(out), weights

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
               need_weights: bool = False, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """q (B, H, T, Dh), k, v (B, H, S, Dh) -> heads merged (B, T, H * Dh), before the output projection."""
        p = self.dropout if self.training else 0.0
        fp32 = not need_weights and _fp32_attention(q)
        if bias is not None:  # one float mask: the bias where attending, -inf elsewhere
            bias = bias.to(torch.float32 if fp32 else q.dtype)
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        if need_weights:
            scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
            scores = scores / math.sqrt(self.dh) if self.scale is None else scores
            if mask is not None:
                scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            out = torch.nn.functional.dropout(weights, p, self.training) @ v  # (B, H, T, Dh)
        elif fp32:
            weights = None
            with torch.autocast("cpu", enabled=False):
                out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                       attn_mask=mask, dropout_p=p,
                                                                       scale=self.scale)
        else:
            weights = None
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                                   scale=self.scale)
        B, _, T, _ = out.shape
        return out.transpose(1, 2).reshape(B, T, -1), weights
