"""Building blocks shared by the Transformer-style models: positions and the feed-forward block.

B batch, L length, D model size, F feed-forward size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Exact Hugging Face semantics (ACT2FN): "gelu" is the erf form, "silu" is HF's "swish"/"silu",
# "gelu_tanh" is the tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh").
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}
POSITIONS = ("sinusoidal", "sinusoidal_split", "learned")


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


class FeedForward(nn.Module):
    """Position-wise D -> F -> D with an activation and dropout between."""

    def __init__(self, dim: int, ff_dim: int, dropout: float, activation: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))
