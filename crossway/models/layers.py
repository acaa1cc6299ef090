"""Building blocks shared by the Transformer-style models: positions (absolute tables and T5's relative position
bias), norms and the feed-forward block.

B batch, L length, D model size, F feed-forward size, H heads, T query length, S key length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Exact Hugging Face semantics (ACT2FN): "gelu" is the erf form, "silu" is HF's "swish"/"silu",
# "gelu_tanh" is the tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh").
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}
POSITIONS = ("sinusoidal", "sinusoidal_split", "learned")  # absolute: a table added to the embeddings
RMS_EPS = 1e-6  # T5LayerNorm's epsilon (Hugging Face layer_norm_epsilon in every T5 checkpoint)


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim): sin on even, cos on odd channels, wavelengths 2pi .. 10000 * 2pi (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def sinusoidal_split_table(length: int, dim: int) -> Tensor:
    """(length, dim): the same sinusoids, sin in the first half of the channels and cos in the second (tensor2tensor,
    fairseq, Marian; Hugging Face `MarianSinusoidalPositionalEmbedding`), computed in float64 as HF does."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    angles = pos / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (length, ceil(D/2))
    return torch.cat([torch.sin(angles), torch.cos(angles[:, : dim // 2])], 1).float()


class Positions(nn.Module):
    """Position encodings added to (scaled) embeddings: fixed sinusoids (interleaved or split) or a learned
    table. A learned table may start at row `offset` (BART keeps 2 unused rows before position 0)."""

    def __init__(self, kind: str, max_len: int, dim: int, offset: int = 0):
        super().__init__()
        self.max_len, self.offset = max_len, offset
        if kind in ("sinusoidal", "sinusoidal_split"):
            make = sinusoidal_table if kind == "sinusoidal" else sinusoidal_split_table
            self.register_buffer("table", make(max_len, dim), persistent=False)
            self.learned = None
        elif kind == "learned":
            self.learned = nn.Embedding(max_len + offset, dim)
        else:
            raise ValueError(f"positions must be one of {list(POSITIONS)}, not {kind!r}")

    def forward(self, positions: Tensor) -> Tensor:
        """positions (...) long, e.g. (B, L) -> (..., D)."""
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_positions={self.max_len}")
        return self.learned(positions + self.offset) if self.learned is not None else self.table[positions]


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias (Raffel et al. 2020; Hugging Face `T5Attention.compute_bias`): a
    learned scalar per head and bucket of the distance key - query, added to the attention scores. Of the
    buckets of a direction, the first half hold one distance each and the rest log-spaced ranges up to
    `max_distance` (farther keys share the last). Bidirectional (the encoder) splits the buckets between the two
    directions; causal (decoder self-attention) gives them all to keys at or before the query."""

    def __init__(self, buckets: int, max_distance: int, heads: int, bidirectional: bool):
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.table = nn.Embedding(buckets, heads)

    def bucket(self, rel: Tensor) -> Tensor:
        """rel (...) long, key position - query position -> bucket ids (...), as Mesh TensorFlow computes them."""
        n, out = self.buckets, torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out = out + (rel > 0).long() * n
            rel = rel.abs()
        else:
            rel = -rel.clamp(max=0)
        exact = n // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_distance / exact)
                         * (n - exact)).long()
        return out + torch.where(rel < exact, rel, large.clamp(max=n - 1))

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """q_pos (T,), k_pos (S,) long -> bias (1, H, T, S) for the attention scores."""
        return self.table(self.bucket(k_pos[None, :] - q_pos[:, None])).permute(2, 0, 1).unsqueeze(0)


class RMSNorm(nn.Module):
    """Root mean square norm (Zhang & Sennrich 2019) as T5 has it (`T5LayerNorm`): no mean subtraction, no bias,
    the mean square in float32 (so half-precision inputs are normalised accurately)."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x.to(self.weight.dtype) if self.weight.dtype in (torch.float16, torch.bfloat16)
                              else x)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


class FeedForward(nn.Module):
    """Position-wise D -> F -> D with an activation and dropout between. Gated (Shazeer 2020, "GLU variants"; T5
    v1.1's gated-gelu): act(fc1 x) * fc1_linear x -> fc2."""

    def __init__(self, dim: int, ff_dim: int, dropout: float, activation: str, gated: bool = False,
                 bias: bool = True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ff_dim, bias=bias), nn.Linear(ff_dim, dim, bias=bias)
        self.fc1_linear = nn.Linear(dim, ff_dim, bias=bias) if gated else None
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(self.drop(h if self.fc1_linear is None else h * self.fc1_linear(x)))
