"""The Transformer encoder-decoder (Vaswani et al. 2017) behind the `encode` / `decode_step` protocol.

B batch, S source length, T target length, D model size, H heads, Dh = D / H, L decoder layers, V vocabulary.

Incremental decoding keeps, per decoder layer i, the self-attention keys and values of all previous target
positions in `state["k{i}"]`, `state["v{i}"]` (B, H, t, Dh), growing by one position per step; the
cross-attention keys and values are computed once in `encode` (`memory["ck{i}"]`, `memory["cv{i}"]`) and reused
at every step. All are batch-first, so search can reorder and shrink them without knowing what they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossway.data.tokenizers import PAD_ID
from crossway.models.attention import MultiHeadAttention
from crossway.models.interface import Memory, State, check_sizes
from crossway.models.layers import ACTIVATIONS, POSITIONS, FeedForward, Positions


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    arch: str = "transformer"
    d_model: int = 256
    heads: int = 4
    ff_dim: int = 1024
    enc_layers: int = 3
    dec_layers: int = 3
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "relu"  # relu | gelu (erf) | silu (= swish) | gelu_tanh
    norm: str = "pre"  # pre (pre-norm, the default) | post (the paper; no final encoder/decoder norm)
    positions: str = "sinusoidal"  # sinusoidal (sin/cos interleaved) | sinusoidal_split (sin half, cos half) | learned
    max_positions: int = 1024
    position_offset: int = 0  # learned positions: table row of position 0 (BART: 2, the rows below unused)
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model) (off in BART)
    embed_norm: bool = False  # LayerNorm after embeddings + positions, in encoder and decoder (BART)
    tie_embeddings: bool = True  # decoder input embedding = output projection (Press & Wolf 2017)
    share_embeddings: bool = False  # source and target embeddings are one matrix (needs equal vocabularies)

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', not {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions must be one of {list(POSITIONS)}, not {self.positions!r}")
        if self.position_offset < 0 or (self.position_offset and self.positions != "learned"):
            raise ValueError(f"model.position_offset={self.position_offset} needs positions 'learned' and >= 0")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {list(ACTIVATIONS)}, not {self.activation!r}")
        check_sizes("model", self, ("d_model", "heads", "ff_dim", "enc_layers", "dec_layers", "max_positions"),
                    ("dropout", "attn_dropout"))
        if self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.heads={self.heads}")


class Sublayer(nn.Module):
    """Residual wrapper: pre-norm x + f(LN(x)), or post-norm LN(x + f(x))."""

    def __init__(self, dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.drop, self.pre_norm = nn.LayerNorm(dim), nn.Dropout(dropout), pre_norm

    def inner(self, x: Tensor) -> Tensor:
        """What the sublayer function reads."""
        return self.norm(x) if self.pre_norm else x

    def merge(self, x: Tensor, fx: Tensor) -> Tensor:
        y = x + self.drop(fx)
        return y if self.pre_norm else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout, cfg.activation)
        self.sub_attn, self.sub_ff = Sublayer(cfg.d_model, cfg.dropout, pre), Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, S, D), mask (B, 1, 1, S) -> (B, S, D)."""
        h = self.sub_attn.inner(x)
        x = self.sub_attn.merge(x, self.self_attn(h, *self.self_attn.project_kv(h), mask)[0])
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout, cfg.activation)
        self.sub_self, self.sub_cross, self.sub_ff = (Sublayer(cfg.d_model, cfg.dropout, pre) for _ in range(3))

    def forward(self, x: Tensor, self_kv: tuple[Tensor, Tensor], self_mask: Tensor | None,
                cross_kv: tuple[Tensor, Tensor], cross_mask: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) with self-attention keys/values already covering every position it may see.

        -> (B, T, D) and, when asked, cross-attention weights (B, H, T, S)."""
        x = self.sub_self.merge(x, self.self_attn(self.sub_self.inner(x), *self_kv, self_mask)[0])
        out, weights = self.cross_attn(self.sub_cross.inner(x), *cross_kv, cross_mask, need_weights)
        x = self.sub_cross.merge(x, out)
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x))), weights


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.cfg, D = cfg, cfg.d_model
        self.scale = math.sqrt(D) if cfg.scale_embeddings else 1.0
        self.src_embed = nn.Embedding(src_vocab, D, padding_idx=PAD_ID)
        if cfg.share_embeddings:
            if src_vocab != tgt_vocab:
                raise ValueError(f"share_embeddings needs one vocabulary ({src_vocab} != {tgt_vocab} tokens)")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab, D, padding_idx=PAD_ID)
        self.src_pos = Positions(cfg.positions, cfg.max_positions, D, cfg.position_offset)
        self.tgt_pos = Positions(cfg.positions, cfg.max_positions, D, cfg.position_offset)
        self.src_embed_norm = nn.LayerNorm(D) if cfg.embed_norm else nn.Identity()
        self.tgt_embed_norm = nn.LayerNorm(D) if cfg.embed_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        pre = cfg.norm == "pre"
        self.enc_norm = nn.LayerNorm(D) if pre else nn.Identity()  # pre-norm stacks end with a norm
        self.dec_norm = nn.LayerNorm(D) if pre else nn.Identity()
        self.generator = nn.Linear(D, tgt_vocab)
        self._init()
        if cfg.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def _init(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, std=self.cfg.d_model ** -0.5)  # unit variance after the sqrt(D) scale
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()

    # --- protocol -------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        B, S = src.shape
        pos = torch.arange(S, device=src.device).expand(B, S)
        x = self.drop(self.src_embed_norm(self.src_embed(src) * self.scale + self.src_pos(pos)))  # (B, S, D)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder:
            x = layer(x, mask)
        x = self.enc_norm(x)
        memory = {"mask": src_mask}
        for i, layer in enumerate(self.decoder):
            memory[f"ck{i}"], memory[f"cv{i}"] = layer.cross_attn.project_kv(x)  # (B, H, S, Dh), once per source
        return memory

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None) -> tuple[Tensor, State]:
        B = prev_tokens.size(0)
        pos = state["pos"] if state is not None else torch.zeros(B, dtype=torch.long, device=prev_tokens.device)
        x = self._embed_target(prev_tokens[:, None], pos[:, None])  # (B, 1, D)
        cross_mask = memory["mask"][:, None, None, :]
        new: State = {"pos": pos + 1}
        attn = []
        for i, layer in enumerate(self.decoder):
            k, v = layer.self_attn.project_kv(layer.sub_self.inner(x))  # (B, H, 1, Dh)
            if state is not None:
                k, v = torch.cat([state[f"k{i}"], k], 2), torch.cat([state[f"v{i}"], v], 2)  # (B, H, t, Dh)
            new[f"k{i}"], new[f"v{i}"] = k, v
            x, w = layer(x, (k, v), None, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask, need_weights=True)
            attn.append(w[:, :, 0])  # (B, H, S)
        new["attn"] = torch.stack(attn, 1)  # (B, L, H, S)
        return self.generator(self.dec_norm(x))[:, 0], new

    def _embed_target(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """tokens, pos (B, T) -> (B, T, D)."""
        return self.drop(self.tgt_embed_norm(self.tgt_embed(tokens) * self.scale + self.tgt_pos(pos)))

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode_prefix(tgt_in, self.encode(src, src_mask))

    def decode_prefix(self, tgt_in: Tensor, memory: Memory) -> Tensor:
        """Teacher-forced decoder over a whole prefix (B, T) -> logits (B, T, V), causal mask, no cache."""
        B, T = tgt_in.shape
        pos = torch.arange(T, device=tgt_in.device).expand(B, T)
        x = self._embed_target(tgt_in, pos)  # (B, T, D)
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).tril()  # (T, T): j <= t
        cross_mask = memory["mask"][:, None, None, :]
        for i, layer in enumerate(self.decoder):
            kv = layer.self_attn.project_kv(layer.sub_self.inner(x))
            x, _ = layer(x, kv, causal, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask)
        return self.generator(self.dec_norm(x))  # (B, T, V)


def build_transformer(cfg: TransformerConfig, src_vocab: int, tgt_vocab: int) -> Transformer:
    return Transformer(cfg, src_vocab, tgt_vocab)
