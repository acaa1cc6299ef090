"""Show, Attend and Tell (Xu et al. 2015): an image in, a sequence of tokens out (a caption, a line of text),
behind the same `encode` / `decode_step` protocol as the text models, so every search, ensemble, scorer and
server decodes it unchanged.

B batch (R = B x G decoding rows, G rows per image in beam search), M grid cells (memory positions), D annotation
size, E embedding size, Hd LSTM size, T target length, V vocabulary.

The encoder (models/image_encoder.py) makes a grid of annotation vectors a_i. With `decoder: lstm` (the paper):
- the LSTM's initial state is h0 = tanh(W_h mean(a)), c0 = tanh(W_c mean(a)) over the image's real cells;
- soft attention (Bahdanau form) alpha_t = softmax(v . tanh(W h_{t-1} + U a_i)) gives the context
  z_t = beta_t sum_i alpha_ti a_i, with the gating scalar beta_t = sigmoid(f_beta(h_{t-1})) (`gate`);
- the LSTM reads [E y_{t-1}; z_t], and the deep output layer predicts y_t from L_o(E y_{t-1} + L_h h_t + L_z z_t)
  (`generator` is L_o);
- training adds the doubly stochastic attention regulariser lambda sum_i (1 - sum_t alpha_ti)^2 per image
  (`attention_reg` = lambda), through `auxiliary_loss`.
With `decoder: transformer`, a Transformer decoder (models/transformer.py, `enc_layers` encoder layers over the
grid first, 0 = none) attends over the same annotations.

memory: "mask" (B, M), "ann" (B, M, D), "keys" (B, M, A) projected once, "h0"/"c0" (B, Hd).
state: "h"/"c" (R, Hd), "attn" (R, M) the step's attention weights (always kept: they are computed anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossway.data.tokenizers import PAD_ID
from crossway.models.attention import AdditiveAttention
from crossway.models.image_encoder import ImageEncoder
from crossway.models.interface import Memory, State, check_sizes
from crossway.models.transformer import Transformer, TransformerConfig
from crossway.models.unet import NORMS

DECODERS = ("lstm", "transformer")


@dataclass(frozen=True, kw_only=True)
class SATConfig:
    arch: str = "sat"
    decoder: str = "lstm"  # lstm (Show, Attend and Tell) | transformer (a Transformer decoder over the same grid)
    # the CNN encoder: `stages` stride-2 stages of `blocks` residual blocks, base_channels doubled per stage
    stages: int = 3  # grid cell = stem_stride * 2**stages pixels square
    stem_stride: int = 1  # 1: a 3x3 stem at full resolution (the most detail); 2 or 4: a strided stem (cheaper)
    base_channels: int = 32
    blocks: int = 1
    norm: str = "batch"  # batch | group | instance | none
    dim: int = 256  # annotation size D (= d_model of the Transformer decoder)
    positions: bool = True  # 2-D sinusoidal positions added to the annotations
    grid_rows: int = 0  # > 0: average each column of the grid down to this many rows (1 suits text lines)
    dropout: float = 0.3
    # lstm decoder
    embed_dim: int = 128
    hidden: int = 256
    attn_dim: int = 256
    gate: bool = True  # the gating scalar beta
    attention_reg: float = 1.0  # lambda of the doubly stochastic attention regulariser; 0 = off
    # transformer decoder
    enc_layers: int = 0  # Transformer encoder layers over the grid before the decoder
    dec_layers: int = 3
    heads: int = 4
    ff_dim: int = 1024

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder must be one of {list(DECODERS)}, not {self.decoder!r}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {list(NORMS)}, not {self.norm!r}")
        check_sizes("model", self, ("stages", "base_channels", "blocks", "dim", "embed_dim", "hidden", "attn_dim",
                                    "dec_layers", "heads", "ff_dim"), ("dropout",))
        if self.attention_reg < 0 or self.enc_layers < 0 or self.grid_rows < 0:
            raise ValueError(f"model.attention_reg, model.enc_layers and model.grid_rows must be >= 0 (got "
                             f"{self.attention_reg}, {self.enc_layers}, {self.grid_rows})")
        if self.stem_stride not in (1, 2, 4):
            raise ValueError(f"model.stem_stride must be 1, 2 or 4, not {self.stem_stride}")
        if self.decoder == "transformer" and self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.heads={self.heads}")


def image_encoder(cfg: SATConfig, channels: int) -> ImageEncoder:
    return ImageEncoder(channels, cfg.dim, cfg.stages, cfg.base_channels, cfg.blocks, cfg.norm, cfg.positions,
                        cfg.grid_rows, cfg.stem_stride)


class ShowAttendTell(nn.Module):
    def __init__(self, cfg: SATConfig, channels: int, vocab: int):
        super().__init__()
        self.cfg = cfg
        D, E, Hd = cfg.dim, cfg.embed_dim, cfg.hidden
        self.encoder = image_encoder(cfg, channels)
        self.embed = nn.Embedding(vocab, E, padding_idx=PAD_ID)
        self.init_h, self.init_c = nn.Linear(D, Hd), nn.Linear(D, Hd)
        self.attention = AdditiveAttention(Hd, D, cfg.attn_dim)
        self.gate = nn.Linear(Hd, 1) if cfg.gate else None
        self.cell = nn.LSTMCell(E + D, Hd)
        self.out_h, self.out_z = nn.Linear(Hd, E), nn.Linear(D, E, bias=False)  # L_h, L_z
        self.drop = nn.Dropout(cfg.dropout)
        self.generator = nn.Linear(E, vocab)  # L_o
        self._penalty: Tensor | None = None

    # --- protocol -------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """src (B, C, H, W) images, src_mask (B, H, W) real pixels."""
        ann, mask = self.encoder(src, src_mask)  # (B, M, D), (B, M)
        m = mask[..., None].to(ann.dtype)
        mean = (ann * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        return {"mask": mask, "ann": ann, "keys": self.attention.project_keys(ann),
                "h0": torch.tanh(self.init_h(mean)), "c0": torch.tanh(self.init_c(mean))}

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        features, state = self._step(prev_tokens, memory, state)
        return self.generator(features), state

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        memory, state, feats, alphas = self.encode(src, src_mask), None, [], []
        for t in range(tgt_in.size(1)):
            f, state = self._step(tgt_in[:, t], memory, state)
            feats.append(f)
            alphas.append(state["attn"])
        if self.training and self.cfg.attention_reg > 0:
            seen = (tgt_in != PAD_ID).to(alphas[0].dtype)  # (B, T): steps that predict a real token or eos
            total = (torch.stack(alphas, 1) * seen[..., None]).sum(1)  # (B, M): sum over t of alpha_ti
            self._penalty = self.cfg.attention_reg * ((1 - total) ** 2 * memory["mask"]).sum()
        f = torch.stack(feats, 1)  # (B, T, E)
        return f if features else self.generator(f)

    def auxiliary_loss(self) -> Tensor | None:
        """The doubly stochastic attention term of the last teacher-forced training pass, summed over its
        images (then cleared), or None."""
        penalty, self._penalty = self._penalty, None
        return penalty

    # --- internals ------------------------------------------------------------------------------------
    def _step(self, prev: Tensor, memory: Memory, state: State | None) -> tuple[Tensor, State]:
        """prev (R,) -> deep-output features (R, E) and the new state."""
        if state is None:
            G = prev.size(0) // memory["h0"].size(0)
            h, c = memory["h0"].repeat_interleave(G, 0), memory["c0"].repeat_interleave(G, 0)
        else:
            h, c = state["h"], state["c"]
        e = self.embed(prev)  # (R, E)
        z, alpha = self.attention(h, memory["keys"], memory["ann"], memory["mask"])  # (R, D), (R, M)
        if self.gate is not None:
            z = torch.sigmoid(self.gate(h)) * z
        h, c = self.cell(torch.cat([e, z], -1), (h, c))
        features = self.drop(e + self.out_h(self.drop(h)) + self.out_z(z))
        return features, {"h": h, "c": c, "attn": alpha}


def build_sat(cfg: SATConfig, channels: int, vocab: int) -> nn.Module:
    """model.arch "sat": Show-Attend-Tell with an LSTM decoder, or the CNN grid under a Transformer decoder."""
    if cfg.decoder == "lstm":
        return ShowAttendTell(cfg, channels, vocab)
    tcfg = TransformerConfig(d_model=cfg.dim, heads=cfg.heads, ff_dim=cfg.ff_dim, enc_layers=cfg.enc_layers,
                             dec_layers=cfg.dec_layers, dropout=cfg.dropout)
    return Transformer(tcfg, 0, vocab, frontend=image_encoder(cfg, channels))
