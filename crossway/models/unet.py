"""U-Net (Ronneberger et al. 2015) and Attention U-Net (Oktay et al. 2018) for semantic segmentation: one
network, with the skips, their attention gates, the norm and the upsampling chosen by the config.

B batch, C input channels, K classes, H W input height and width, Hp Wp padded height and width (multiples of
2**L), L depth (number of downsamplings), l level (0 = top, full resolution; L = bottleneck), F_l channels at
level l (base_channels * 2**l), F_int attention-gate channels (F_l // 2).

The model is a plain `nn.Module` (no seq2seq protocol): `forward(x)` -> logits, with `gates=True` also the
attention coefficients for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossway.models.interface import check_sizes

NORMS = ("batch", "group", "instance", "none")
UPSAMPLES = ("transpose", "bilinear")
ENCODERS = ("plain", "residual")
MAX_GROUPS = 8  # group norm: at most this many groups (Wu & He 2018 use 32 groups on wider layers)


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    arch: str = "unet"
    depth: int = 4  # downsamplings (levels below the top)
    base_channels: int = 32  # channels at the top level, doubled at each level down
    norm: str = "batch"  # batch | group | instance | none
    upsample: str = "transpose"  # transpose (2x2 transposed conv) | bilinear (+ 1x1 conv)
    dropout: float = 0.0  # Dropout2d in the bottleneck and decoder blocks
    skips: bool = True  # false: a plain encoder-decoder, the same network with no skip connections
    attention_gates: bool = False  # Attention U-Net: additive gates on the skips, gated by the coarser decoder level
    encoder: str = "plain"  # plain (two 3x3 convs a level, Ronneberger et al.) | residual (res_blocks basic
    # residual blocks a level, He et al. 2016: the encoder of ResNet-style U-Nets such as SMP's)
    res_blocks: int = 2  # encoder: residual: blocks per encoder level and in the bottleneck

    def __post_init__(self):
        check_sizes("model", self, ("depth", "base_channels", "res_blocks"), ("dropout",))
        if self.encoder not in ENCODERS:
            raise ValueError(f"model.encoder must be one of {list(ENCODERS)}, not {self.encoder!r}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {list(NORMS)}, not {self.norm!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"model.upsample must be one of {list(UPSAMPLES)}, not {self.upsample!r}")
        if self.attention_gates and not self.skips:
            raise ValueError("model.attention_gates needs model.skips: the gates act on the skip connections")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # the largest group count <= MAX_GROUPS that divides the channels (GroupNorm requires it): 8 for the
        # usual power-of-two widths, fewer for tiny or odd ones (3 channels -> 3 groups, 5 -> 5, 12 -> 6)
        groups = next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) twice, with Dropout2d between the two convs when dropout > 0."""

    def __init__(self, c_in: int, c_out: int, norm: str, dropout: float):
        bias = norm == "none"  # a norm's shift makes a conv bias redundant
        conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        for conv in (conv1, conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # He et al. 2015: keeps ReLU activations' scale
        super().__init__(conv1, make_norm(norm, c_out), nn.ReLU(inplace=True),
                         nn.Dropout2d(dropout) if dropout else nn.Identity(),
                         conv2, make_norm(norm, c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """He et al. 2016's basic block: 3x3 conv -> norm -> ReLU -> 3x3 conv -> norm, plus the input (through a 1x1
    conv and norm when the width changes), then ReLU. The second norm starts at zero scale (Goyal et al. 2017),
    so each block starts as the identity and a deep encoder trains from the first step."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        self.norm1, self.norm2 = make_norm(norm, c_out), make_norm(norm, c_out)
        if isinstance(self.norm2, nn.BatchNorm2d | nn.GroupNorm | nn.InstanceNorm2d):
            nn.init.zeros_(self.norm2.weight)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=bias), make_norm(norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x), inplace=True)


def encoder_block(c_in: int, c_out: int, cfg: UNetConfig, dropout: float) -> nn.Module:
    """One encoder level (or the bottleneck): a ConvBlock, or res_blocks residual blocks."""
    if cfg.encoder == "plain":
        return ConvBlock(c_in, c_out, cfg.norm, dropout)
    blocks = [ResidualBlock(c_in if i == 0 else c_out, c_out, cfg.norm) for i in range(cfg.res_blocks)]
    return nn.Sequential(*blocks, nn.Dropout2d(dropout)) if dropout else nn.Sequential(*blocks)


class AttentionGate(nn.Module):
    """Additive attention gate, Oktay et al. 2018 eq. 1-2:
    q = psi^T ReLU(W_x^T x_l + W_g^T g + b_g) + b_psi, alpha = sigmoid(q), output alpha * x_l.

    g comes from the coarser level (half x_l's resolution). The paper downsamples x_l to g's grid (a strided W_x)
    and upsamples alpha back; here W_g g is computed on the coarse grid and upsampled bilinearly to x_l's grid
    instead, so the gate is computed, and alpha lives, at the skip's full resolution with no second resampling.
    (A 1x1 conv commutes with bilinear interpolation, so projecting before upsampling is exact and 4x cheaper.)
    """

    def __init__(self, x_channels: int, g_channels: int, inner: int):
        super().__init__()
        self.w_x = nn.Conv2d(x_channels, inner, 1, bias=False)
        self.w_g = nn.Conv2d(g_channels, inner, 1)  # b_g
        self.psi = nn.Conv2d(inner, 1, 1)  # b_psi

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, F_l, h, w), g (B, F_{l+1}, h/2, w/2) -> gated x (B, F_l, h, w), alpha (B, 1, h, w) in [0, 1]."""
        wg = F.interpolate(self.w_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, F_int, h, w)
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + wg)))  # (B, 1, h, w)
        return x * alpha, alpha


class UpBlock(nn.Module):
    """Decoder level l: upsample level l+1's output to F_l channels, gate and concatenate the skip (if any),
    then a ConvBlock. With no skip the ConvBlock reads only the upsampled path (F_l channels, not 2 F_l)."""

    def __init__(self, c_in: int, c_out: int, *, skip: bool, gate: bool, norm: str, upsample: str,
                 dropout: float):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:  # the 1x1 conv runs before the upsampling: the two commute exactly, and this way is 4x cheaper
            self.up = nn.Sequential(nn.Conv2d(c_in, c_out, 1),
                                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.gate = AttentionGate(c_out, c_in, max(1, c_out // 2)) if gate else None
        self.skip = skip
        self.conv = ConvBlock(2 * c_out if skip else c_out, c_out, norm, dropout)

    def forward(self, g: Tensor, skip: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """g (B, F_{l+1}, h/2, w/2), skip (B, F_l, h, w) or None -> (B, F_l, h, w), alpha (B, 1, h, w) or None."""
        up = self.up(g)  # (B, F_l, h, w)
        if not self.skip:
            return self.conv(up), None
        alpha = None
        if self.gate is not None:
            skip, alpha = self.gate(skip, g)  # gated by the coarser decoder signal, before its upsampling
        return self.conv(torch.cat([skip, up], 1)), alpha  # (B, 2 F_l, h, w) -> (B, F_l, h, w)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        L, widths = cfg.depth, [cfg.base_channels * 2**level for level in range(cfg.depth + 1)]  # F_0 .. F_L
        self.encoder = nn.ModuleList(encoder_block(in_channels if level == 0 else widths[level - 1], widths[level],
                                                   cfg, 0.0) for level in range(L))
        self.bottleneck = encoder_block(widths[L - 1], widths[L], cfg, cfg.dropout)
        self.decoder = nn.ModuleList(  # decoder[l] produces level l from level l + 1
            UpBlock(widths[level + 1], widths[level], skip=cfg.skips, gate=cfg.attention_gates, norm=cfg.norm,
                    upsample=cfg.upsample, dropout=cfg.dropout) for level in range(L))
        self.head = nn.Conv2d(widths[0], num_classes, 1)  # convs not followed by a ReLU keep PyTorch's init

    def forward(self, x: Tensor, gates: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """x (B, C, H, W), any H, W >= 1 -> logits (B, K, H, W); with gates=True (logits, alphas): one attention
        map per skip level from fine to coarse, level l (B, 1, ceil(H / 2**l), ceil(W / 2**l)) in [0, 1] (the
        padding cropped off), an empty list when the model has no attention gates."""
        H, W = x.shape[-2:]
        h = self._pad(x)  # (B, C, Hp, Wp)
        skips = []
        for block in self.encoder:
            h = block(h)  # (B, F_l, Hp / 2**l, Wp / 2**l)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)  # (B, F_L, Hp / 2**L, Wp / 2**L)
        alphas = []
        for level in reversed(range(self.cfg.depth)):
            h, alpha = self.decoder[level](h, skips[level] if self.cfg.skips else None)  # (B, F_l, ...)
            if alpha is not None:
                alphas.append(alpha[..., :ceil_div(H, 2**level), :ceil_div(W, 2**level)])
        logits = self.head(h)[..., :H, :W]  # (B, K, H, W): the padding cropped off
        return (logits, alphas[::-1]) if gates else logits

    def _pad(self, x: Tensor) -> Tensor:
        """Zero-pad the bottom and right up to multiples of m = 2**L, so that every pooling halves exactly.

        Zeros rather than reflection: the 3x3 convs already zero-pad at the canvas edge, so the padded band looks
        like the "outside of the image" the network sees at every border, whatever the image size; for inputs
        normalised to zero mean it is the mean intensity; and it works for any pad width, where reflection needs
        pad < size (a 1x1 or 1000x17 image would need repeated reflection or a fallback to replication).
        Padding only at the bottom and right anchors the pooling grid at the top-left pixel whatever the size, so
        cropping the logits is plain slicing and a pixel falls in the same pooling cells in any image size.
        A bottleneck of a single pixel would make instance norm fail (and batch norm too, for one image in
        training), so inputs that fit in one m x m tile are padded to 2m x 2m: the bottleneck is then 2x2.
        """
        m = 2**self.cfg.depth
        H, W = x.shape[-2:]
        Hp, Wp = ceil_div(H, m) * m, ceil_div(W, m) * m
        if Hp == Wp == m:
            Hp = Wp = 2 * m
        if (Hp, Wp) == (H, W):
            return x
        return F.pad(x, (0, Wp - W, 0, Hp - H))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def build_unet(cfg: UNetConfig, in_channels: int, num_classes: int) -> UNet:
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"a U-Net needs in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}")
    return UNet(cfg, in_channels, num_classes)
