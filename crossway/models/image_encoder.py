"""Images as a sequence source: a small ResNet-style CNN (He et al. 2016) that turns an image into a grid of
annotation vectors, flattened into memory positions for a decoder to attend over (Show, Attend and Tell's
encoder, Xu et al. 2015; also the Transformer's image front-end).

B batch, C channels, H x W pixels, h x w grid cells (H / 2**stages, W / 2**stages, rounded up), M = h * w memory
positions, D annotation size.

Positions run **column by column** (x-major: cell (i, j) is position j * h + i), so an image padded on the right
(a short text line in a batch of long ones) has its real cells first, as a padded sentence has its real tokens
first: search cuts attention to a row's real positions by count, whatever the source. `grid_shape` recovers
(h, w) from an image's size.

Padding never leaks: the encoder pads H and W to multiples of its stride and zeroes every padded pixel and cell
after every convolution, so in eval mode (BatchNorm's running statistics) an image encodes the same alone and in
a padded batch. `rows` > 0 averages each column of cells down to that many rows (1 for text lines: a left-to-right
sequence of columns, as CRNN-style recognisers read a line).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossway.models.unet import make_norm


class _Block(nn.Module):
    """A basic residual block (two 3x3 convolutions), its first one strided; padded cells zeroed after each."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))
                      if stride != 1 or cin != cout else nn.Identity())
        if getattr(self.norm2, "weight", None) is not None:  # each block starts as its shortcut (Goyal et al. 2017)
            nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, Cin, H, W) -> (B, Cout, H', W'); keep (B, 1, H', W') float, 1 at real cells."""
        y = F.relu(self.norm1(self.conv1(x))) * keep
        return F.relu(self.norm2(self.conv2(y)) + self.short(x)) * keep


def _sinusoid(n: int, dim: int, device: torch.device) -> Tensor:
    """(n, dim) sinusoidal positions (sin on even channels, cos on odd)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class ImageEncoder(nn.Module):
    """images (B, C, H, W) float, pixel mask (B, H, W) bool -> annotations (B, M, D), memory mask (B, M)."""

    def __init__(self, channels: int, dim: int, stages: int = 3, base_channels: int = 32, blocks: int = 1,
                 norm: str = "batch", positions: bool = True, rows: int = 0, stem_stride: int = 1):
        super().__init__()
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"model.stem_stride must be 1, 2 or 4, not {stem_stride}")
        self.stride, self.dim, self.positions, self.rows = stem_stride * 2 ** stages, dim, positions, rows
        self.stem_stride = stem_stride
        k = 3 if stem_stride == 1 else 2 * stem_stride  # a strided stem sees each pixel: 4x4/2 or 8x8/4
        self.stem = nn.Sequential(nn.Conv2d(channels, base_channels, k, stem_stride, (k - stem_stride) // 2 if
                                            stem_stride > 1 else 1, bias=False),
                                  make_norm(norm, base_channels), nn.ReLU())
        self.stages = nn.ModuleList()
        cin = base_channels
        for s in range(stages):
            cout = base_channels * 2 ** s
            self.stages.append(nn.ModuleList(_Block(cin if b == 0 else cout, cout, 2 if b == 0 else 1, norm)
                                             for b in range(blocks)))
            cin = cout
        self.proj = nn.Conv2d(cin, dim, 1)  # annotation vectors a_i (D)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        B, _, H, W = images.shape
        ph, pw = -H % self.stride, -W % self.stride
        keep = mask[:, None].to(images.dtype)  # (B, 1, H, W)
        if ph or pw:
            images, keep = F.pad(images, (0, pw, 0, ph)), F.pad(keep, (0, pw, 0, ph))
        images = images * keep  # padded pixels are zero, whatever the caller put there
        if self.stem_stride > 1:
            keep = F.max_pool2d(keep, self.stem_stride)
        x = self.stem(images) * keep
        for blocks in self.stages:
            keep = F.max_pool2d(keep, 2)  # a cell is real when any pixel under it is
            for b in blocks:
                x = b(x, keep)
        x = self.proj(x) * keep  # (B, D, h, w)
        if self.rows and x.size(2) > self.rows:  # text lines: average each column's cells down to `rows` rows
            x, keep = (F.adaptive_avg_pool2d(t, (self.rows, t.size(3))) for t in (x, keep))
            x, keep = x / keep.clamp(min=1e-6) * (keep > 0), (keep > 0).to(x.dtype)  # a mean over real cells
        h, w = x.shape[2:]
        if self.positions:  # half the channels say the row, half the column
            half = self.dim // 2
            rows = _sinusoid(h, half, x.device).T[:, :, None]  # (D/2, h, 1)
            cols = _sinusoid(w, self.dim - half, x.device).T[:, None, :]  # (D - D/2, 1, w)
            x = x + torch.cat([rows.expand(-1, h, w), cols.expand(-1, h, w)]).to(x.dtype) * keep
        ann = x.permute(0, 3, 2, 1).reshape(B, w * h, self.dim)  # column by column: (B, M, D)
        return ann, keep[:, 0].transpose(1, 2).reshape(B, w * h) > 0


def grid_shape(height: int, width: int, positions: int) -> tuple[int, int]:
    """(h, w) of the grid an encoder of some power-of-two stride made from a height x width image, given its
    number of memory positions (fewer rows than the stride gives when the encoder averages rows); its attention
    (..., M) reads as (..., w, h) -> transpose to (..., h, w)."""
    for pooled in (False, True):
        for k in range(12):
            s = 2 ** k
            h, w = -(-height // s), -(-width // s)
            if not pooled and h * w == positions:
                return h, w
            if pooled and positions % w == 0 and positions // w < h:
                return positions // w, w
    raise ValueError(f"{positions} memory positions match no power-of-two grid of a {width}x{height} image")
