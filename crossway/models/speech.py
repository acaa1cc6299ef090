"""A Whisper-style speech model (Radford et al. 2022): log-mel frames in, tokens out, behind the same `encode` /
`decode_step` protocol as the text and image models, so every search, ensemble, scorer and server decodes it.

B batch, T feature frames (10 ms), F mel bins, D model size, M = ceil(T / stem_stride) memory positions.

The front-end is Whisper's convolutional stem: two 1-D convolutions of width 3 with GELU, the second of stride 2
(`stem_stride: 4` makes both stride 2, for half the encoder positions), then fixed sinusoidal positions (Whisper's
`sinusoids`: sines in the first half of the channels, cosines in the second). The Transformer encoder and decoder
are crossway's (models/transformer.py; pre-norm, GELU), the stem its `frontend`. Whisper's special tokens are
targets of the vocabulary (crossway.speech): the decoder reads `<|startoftranscript|>` (crossway's bos) then the
task prompt `<|en|> <|transcribe|> <|notimestamps|>` or `<|en|> <|translate|> <|notimestamps|>`
(models/prompted.py feeds it in decoding).

Padding never leaks: every row's frames after its end are zero (AudioFormat.collate) and the first
convolution's outputs after the end are zeroed, so the second convolution reads at a row's end exactly the zero
padding it reads when the utterance is alone: an utterance encodes the same alone and in a padded batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossway.models.interface import check_sizes
from crossway.models.transformer import Transformer, TransformerConfig


@dataclass(frozen=True, kw_only=True)
class WhisperConfig:
    arch: str = "whisper"
    dim: int = 256  # D (Whisper tiny: 384, base: 512)
    heads: int = 4
    ff_dim: int = 1024
    enc_layers: int = 4
    dec_layers: int = 4
    dropout: float = 0.1
    stem_stride: int = 2  # 2: Whisper's stem (one memory position per 20 ms); 4: both convolutions strided (40 ms)
    max_positions: int = 1024  # decoder positions (sinusoidal: a bound for checks only)

    def __post_init__(self):
        check_sizes("model", self, ("dim", "heads", "ff_dim", "dec_layers", "max_positions"), ("dropout",))
        if self.enc_layers < 0:
            raise ValueError(f"model.enc_layers must be >= 0, got {self.enc_layers}")
        if self.stem_stride not in (2, 4):
            raise ValueError(f"model.stem_stride must be 2 (Whisper) or 4, not {self.stem_stride}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.heads={self.heads}")


def sinusoids(length: int, channels: int, device: torch.device | None = None) -> Tensor:
    """Whisper's encoder positions (length, channels): sin(t / 10000^(k / (C/2 - 1))) in channels k < C/2, cos in
    the rest."""
    half = channels // 2
    inv = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, device=device, dtype=torch.float32))
    t = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([t.sin(), t.cos()], 1)


class AudioStem(nn.Module):
    """(B, T, F) frames, mask (B, T) -> (B, M, D) features with positions, mask (B, M)."""

    def __init__(self, n_mels: int, dim: int, stride: int = 2):
        super().__init__()
        first = 2 if stride == 4 else 1
        self.conv1 = nn.Conv1d(n_mels, dim, 3, first, 1)
        self.conv2 = nn.Conv1d(dim, dim, 3, 2, 1)
        self.dim = dim

    @staticmethod
    def _keep(lengths: Tensor, stride: int, size: int) -> tuple[Tensor, Tensor]:
        """Lengths after a width-3, padding-1 convolution of `stride` and the mask (B, size)."""
        lengths = (lengths - 1) // stride + 1
        return lengths, torch.arange(size, device=lengths.device)[None] < lengths[:, None]

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        lengths = src_mask.sum(1)
        x = F.gelu(self.conv1(src.transpose(1, 2)))  # (B, D, T1)
        lengths, mask = self._keep(lengths, self.conv1.stride[0], x.size(2))
        x = x * mask[:, None].to(x.dtype)  # padding stays zero for the next convolution
        x = F.gelu(self.conv2(x))  # (B, D, M)
        _, mask = self._keep(lengths, 2, x.size(2))
        x = x.transpose(1, 2) + sinusoids(x.size(2), self.dim, x.device).to(x.dtype)  # (B, M, D)
        return x, mask


def build_whisper(cfg: WhisperConfig, n_mels: int, vocab: int) -> Transformer:
    """model.arch "whisper": the audio stem as the Transformer's front-end."""
    tcfg = TransformerConfig(d_model=cfg.dim, heads=cfg.heads, ff_dim=cfg.ff_dim, enc_layers=cfg.enc_layers,
                             dec_layers=cfg.dec_layers, dropout=cfg.dropout, activation="gelu", norm="pre",
                             max_positions=cfg.max_positions)
    return Transformer(tcfg, 0, vocab, frontend=AudioStem(n_mels, cfg.dim, cfg.stem_stride))
