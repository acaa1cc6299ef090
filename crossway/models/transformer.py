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

# the self-attention cache grows by this many positions when full: beam search copies the whole buffer when it
# reorders beams, so spare capacity costs time at every step; growing costs one copy per CACHE_CHUNK steps
CACHE_CHUNK = 16


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
    activation_dropout: float | None = None  # inside the feed-forward block, after the activation; None: = dropout
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
        check_sizes("model", self, ("d_model", "heads", "ff_dim", "dec_layers", "max_positions"),
                    ("dropout", "attn_dropout"))
        if self.enc_layers < 0:
            raise ValueError(f"model.enc_layers must be >= 0, got {self.enc_layers}")
        if self.activation_dropout is not None and not 0 <= self.activation_dropout < 1:
            raise ValueError(f"model.activation_dropout must be in [0, 1), got {self.activation_dropout}")
        if self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.heads={self.heads}")


def _ff_dropout(cfg: TransformerConfig) -> float:
    return cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout


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


class Tokens:
    """The real positions of a padded batch, mask (B, S) -> N tokens. The encoder's projections, feed-forward
    and norms run on the (N, D) real tokens only (padding is often a third of a length-sorted batch); attention
    unpacks them to (B, S, D), zeros at padding, which the mask hides (CTranslate2's Padder does the same)."""

    def __init__(self, mask: Tensor):
        self.shape = mask.shape
        self.index = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the real tokens
        self.dense = self.index.numel() == mask.numel()  # no padding: packing is a reshape

    def pack(self, x: Tensor) -> Tensor:
        """(B, S, ...) -> (N, ...)."""
        x = x.reshape(-1, *x.shape[2:])
        return x if self.dense else x.index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) -> (B, S, ...), zeros at padding."""
        if not self.dense:
            x = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy(0, self.index, x)
        return x.view(*self.shape, *x.shape[1:])


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, _ff_dropout(cfg), cfg.activation)
        self.sub_attn, self.sub_ff = Sublayer(cfg.d_model, cfg.dropout, pre), Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        """x (N, D), the real tokens of a padded batch; mask (B, 1, 1, S) -> (N, D). Only attention sees the
        padded layout."""
        a, h = self.self_attn, self.sub_attn.inner(x)
        q, k, v = (a.split(tokens.unpack(proj(h))) for proj in (a.q_proj, a.k_proj, a.v_proj))  # (B, H, S, Dh)
        x = self.sub_attn.merge(x, a.out_proj(tokens.pack(a.attend(q, k, v, mask)[0])))
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, _ff_dropout(cfg), cfg.activation)
        self.sub_self, self.sub_cross, self.sub_ff = (Sublayer(cfg.d_model, cfg.dropout, pre) for _ in range(3))

    def forward(self, x: Tensor, self_kv: tuple[Tensor, Tensor], self_mask: Tensor | None,
                cross_kv: tuple[Tensor, Tensor], cross_mask: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) with self-attention keys/values already covering every position it may see.

        The cross-attention keys/values cover B / G sources, each shared by G consecutive rows (beam search's
        beams): their queries attend together as G * T positions, so the source is read once per step, not G
        times. -> (B, T, D) and, when asked, cross-attention weights (B, H, T, S)."""
        x = self.sub_self.merge(x, self.self_attn(self.sub_self.inner(x), *self_kv, self_mask)[0])
        B, T, D = x.shape
        G = B // cross_kv[0].size(0)
        h = self.sub_cross.inner(x).reshape(B // G, G * T, D)  # (B / G, G * T, D)
        out, weights = self.cross_attn(h, *cross_kv, cross_mask, need_weights)
        if weights is not None:  # (B / G, H, G * T, S) -> (B, H, T, S)
            weights = weights.unflatten(2, (G, T)).transpose(1, 2).flatten(0, 1)
        x = self.sub_cross.merge(x, out.reshape(B, T, D))
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x))), weights


class Transformer(nn.Module):
    """Token ids in, or with a `frontend` any source: a module (src, src_mask) -> (features (B, M, D), mask
    (B, M)) that replaces the source embedding and positions (models/image_encoder.py for images)."""

    def __init__(self, cfg: TransformerConfig, src_vocab: int, tgt_vocab: int, frontend: nn.Module | None = None):
        super().__init__()
        self.cfg, D = cfg, cfg.d_model
        self.scale = math.sqrt(D) if cfg.scale_embeddings else 1.0
        self.frontend = frontend
        self.src_embed = nn.Embedding(src_vocab, D, padding_idx=PAD_ID) if frontend is None else None
        if cfg.share_embeddings:
            if frontend is not None:
                raise ValueError("model.share_embeddings needs token ids on both sides")
            if src_vocab != tgt_vocab:
                raise ValueError(f"share_embeddings needs one vocabulary ({src_vocab} != {tgt_vocab} tokens)")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab, D, padding_idx=PAD_ID)
        self.src_pos = Positions(cfg.positions, cfg.max_positions, D, cfg.position_offset) if frontend is None else None
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
        for emb in (e for e in (self.src_embed, self.tgt_embed) if e is not None):
            nn.init.normal_(emb.weight, std=self.cfg.d_model ** -0.5)  # unit variance after the sqrt(D) scale
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()

    # --- protocol -------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        if self.frontend is None:
            B, S = src.shape
            tokens = Tokens(src_mask)
            ids, pos = tokens.pack(src), tokens.pack(torch.arange(S, device=src.device).expand(B, S))  # (N,)
            x = self.drop(self.src_embed_norm(self.src_embed(ids) * self.scale + self.src_pos(pos)))  # (N, D)
        else:
            feats, src_mask = self.frontend(src, src_mask)  # (B, M, D), (B, M)
            tokens = Tokens(src_mask)
            x = self.drop(self.src_embed_norm(tokens.pack(feats)))  # (N, D)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder:
            x = layer(x, tokens, mask)
        x = self.enc_norm(x)
        memory = {"mask": src_mask}
        for i, layer in enumerate(self.decoder):  # cross-attention keys and values, once per source
            a = layer.cross_attn
            # (B, H, S, Dh), contiguous: attention over a strided view would copy it at every step
            memory[f"ck{i}"], memory[f"cv{i}"] = (a.split(tokens.unpack(p(x))).contiguous() for p in (a.k_proj,
                                                                                                       a.v_proj))
        return memory

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """With attention=True, also the cross-attention weights (B, L, H, S) under state["attn"], computed
        explicitly; without, every attention runs fused (scaled_dot_product_attention) and none are kept."""
        B = prev_tokens.size(0)
        pos = state["pos"] if state is not None else torch.zeros(B, dtype=torch.long, device=prev_tokens.device)
        t = int(pos[0]) if state is not None else 0  # every row is at the same step
        x = self._embed_target(prev_tokens[:, None], pos[:, None])  # (B, 1, D)
        cross_mask = memory["mask"][:, None, None, :]
        new: State = {"pos": pos + 1}
        attn = []
        for i, layer in enumerate(self.decoder):
            k, v = layer.self_attn.project_kv(layer.sub_self.inner(x))  # (B, H, 1, Dh)
            old = (None, None) if state is None else (state[f"k{i}"], state[f"v{i}"])
            new[f"k{i}"], new[f"v{i}"] = _append(old[0], k, t), _append(old[1], v, t)  # (B, H, C, Dh)
            kv = new[f"k{i}"][:, :, : t + 1], new[f"v{i}"][:, :, : t + 1]  # (B, H, t + 1, Dh)
            x, w = layer(x, kv, None, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask, attention)
            if attention:
                attn.append(w[:, :, 0])  # (B, H, S)
        if attention:
            new["attn"] = torch.stack(attn, 1)  # (B, L, H, S)
        return self.generator(self.dec_norm(x))[:, 0], new

    def _embed_target(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """tokens, pos (B, T) -> (B, T, D)."""
        return self.drop(self.tgt_embed_norm(self.tgt_embed(tokens) * self.scale + self.tgt_pos(pos)))

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        return self.decode_prefix(tgt_in, self.encode(src, src_mask), features)

    def decode_prefix(self, tgt_in: Tensor, memory: Memory, features: bool = False) -> Tensor:
        """Teacher-forced decoder over a whole prefix (B, T) -> logits (B, T, V), causal mask, no cache; with
        features=True the generator's input (B, T, D) instead."""
        B, T = tgt_in.shape
        pos = torch.arange(T, device=tgt_in.device).expand(B, T)
        x = self._embed_target(tgt_in, pos)  # (B, T, D)
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).tril()  # (T, T): j <= t
        cross_mask = memory["mask"][:, None, None, :]
        for i, layer in enumerate(self.decoder):
            kv = layer.self_attn.project_kv(layer.sub_self.inner(x))
            x, _ = layer(x, kv, causal, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask)
        x = self.dec_norm(x)
        return x if features else self.generator(x)  # (B, T, D) or (B, T, V)


def _append(cache: Tensor | None, new: Tensor, t: int) -> Tensor:
    """The self-attention cache (B, H, C, Dh) with `new` (B, H, 1, Dh) written at position t; positions after t
    are spare capacity. Without autograd the write is in place and C grows by CACHE_CHUNK when full, so a step
    costs no O(t) copy of a concatenation (which also allocated a new buffer every step). Under autograd
    (stepwise scheduled sampling) each step gets a fresh tensor: tensors saved for backward must not change."""
    grad = torch.is_grad_enabled()
    if cache is None or t == cache.size(2) or grad:
        B, H, _, Dh = new.shape
        grown = new.new_empty(B, H, t + 1 if grad else t + CACHE_CHUNK, Dh)
        if t:
            grown[:, :, :t] = cache[:, :, :t]
        cache = grown
    cache[:, :, t: t + 1] = new
    return cache


def build_transformer(cfg: TransformerConfig, src_vocab: int, tgt_vocab: int) -> Transformer:
    return Transformer(cfg, src_vocab, tgt_vocab)
