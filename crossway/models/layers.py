"""Building blocks shared by the Transformer-style models: positions and the feed-forward block.

B batch, L length, D model size, F feed-forward size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim): sin on even, cos on odd channels, wavelengths 2pi .. 10000 * 2pi (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class Positions(nn.Module):
    """Position encodings added to scaled embeddings: fixed sinusoids or a learned table."""

    def __init__(self, kind: str, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        if kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)
            self.learned = None
        elif kind == "learned":
            self.learned = nn.Embedding(max_len, dim)
        else:
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', not {kind!r}")

    def forward(self, positions: Tensor) -> Tensor:
        """positions (B, L) long -> (B, L, D)."""
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_positions={self.max_len}")
        return self.learned(positions) if self.learned is not None else self.table[positions]


class FeedForward(nn.Module):
    """Position-wise D -> F -> D with an activation and dropout between."""

    def __init__(self, dim: int, ff_dim: int, dropout: float, activation: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))
