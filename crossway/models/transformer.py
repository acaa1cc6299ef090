"""The Transformer encoder-decoder (Vaswani et al. 2017) behind the `encode` / `decode_step` protocol.

B batch, S source length, T target length, D model size, H heads, Dh head size (D / H unless head_dim), L decoder
layers, V vocabulary.

Incremental decoding keeps, per decoder layer i, the self-attention keys and values of all previous target
positions in `state["k{i}"]`, `state["v{i}"]` (B, H, t, Dh), growing by one position per step; the
cross-attention keys and values are computed once in `encode` (`memory["ck{i}"]`, `memory["cv{i}"]`) and reused
at every step. All are batch-first, so search can reorder and shrink them without knowing what they are.

T5 (Raffel et al. 2020) is a set of options (crossway/hf_t5.py imports and exports it): positions "relative"
(one bucketed bias table per stack, shared by its layers, none in cross-attention, no position embeddings),
norm_kind "rmsnorm", gated_ff (v1.1), bias=False, scale_attention=False, head_dim (d_kv) and scale_output (v1.0:
the decoder output times D ** -0.5 before the tied output layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossway.data.tokenizers import PAD_ID
from crossway.models.attention import MultiHeadAttention
from crossway.models.interface import Memory, State, check_sizes
from crossway.models.layers import ACTIVATIONS, NORMS, POSITIONS, FeedForward, Positions, RelativePositionBias

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
    # sinusoidal (sin/cos interleaved) | sinusoidal_split (sin half, cos half) | learned | relative (T5's bias)
    positions: str = "sinusoidal"
    rel_buckets: int = 32  # relative positions: buckets per stack (T5 relative_attention_num_buckets)
    rel_max_distance: int = 128  # relative positions: farther keys share the last bucket
    max_positions: int = 1024
    position_offset: int = 0  # learned positions: table row of position 0 (BART: 2, the rows below unused)
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model) (off in BART)
    embed_norm: bool = False  # LayerNorm after embeddings + positions, in encoder and decoder (BART)
    tie_embeddings: bool = True  # decoder input embedding = output projection (Press & Wolf 2017)
    share_embeddings: bool = False  # source and target embeddings are one matrix (needs equal vocabularies)
    norm_kind: str = "layernorm"  # layernorm | rmsnorm (T5: no mean, no bias, eps 1e-6, in float32)
    gated_ff: bool = False  # feed-forward act(fc1 x) * fc1_linear x -> fc2 (T5 v1.1 gated-gelu: gelu_tanh)
    bias: bool = True  # biases in the attention and feed-forward projections (T5 has none)
    head_dim: int = 0  # per-head size (T5 d_kv); 0: d_model / heads. heads * head_dim may differ from d_model
    scale_attention: bool = True  # scores / sqrt(head size); T5 folds it into its initialisation
    scale_output: bool = False  # decoder output * d_model ** -0.5 before the output layer (T5 v1.0, tied)
    output_bias: bool = True  # the output layer's bias (HF final_logits_bias; a T5 exported from crossway has none)

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', not {self.norm!r}")
        if self.positions not in (*POSITIONS, "relative"):
            raise ValueError(f"model.positions must be one of {[*POSITIONS, 'relative']}, not {self.positions!r}")
        if self.norm_kind not in NORMS:
            raise ValueError(f"model.norm_kind must be one of {list(NORMS)}, not {self.norm_kind!r}")
        self._check_relative()
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
        if self.head_dim < 0:
            raise ValueError(f"model.head_dim must be >= 0 (0: d_model / heads), got {self.head_dim}")
        if not self.head_dim and self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.heads={self.heads} "
                             "(or set model.head_dim)")

    def _check_relative(self) -> None:
        if self.positions != "relative":
            for name, default in (("rel_buckets", 32), ("rel_max_distance", 128)):
                if getattr(self, name) != default:
                    raise ValueError(f"model.{name}={getattr(self, name)} needs positions 'relative'")
            return
        # the encoder's buckets are halved per direction, then halved again into exact and log-spaced ones
        if self.rel_buckets < 4:
            raise ValueError(f"model.rel_buckets must be >= 4, got {self.rel_buckets}")
        if self.rel_max_distance <= self.rel_buckets // 2:
            raise ValueError(f"model.rel_max_distance={self.rel_max_distance} must exceed model.rel_buckets / 2 "
                             f"= {self.rel_buckets // 2}")


def _ff_dropout(cfg: TransformerConfig) -> float:
    return cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout


def _attention(cfg: TransformerConfig) -> MultiHeadAttention:
    return MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout, bias=cfg.bias, head_dim=cfg.head_dim,
                              scale=cfg.scale_attention)


def _feed_forward(cfg: TransformerConfig) -> FeedForward:
    return FeedForward(cfg.d_model, cfg.ff_dim, _ff_dropout(cfg), cfg.activation, gated=cfg.gated_ff, bias=cfg.bias)


class Sublayer(nn.Module):
    """Residual wrapper: pre-norm x + f(LN(x)), or post-norm LN(x + f(x)); LN a LayerNorm or an RMSNorm."""

    def __init__(self, dim: int, dropout: float, pre_norm: bool, norm: str = "layernorm"):
        super().__init__()
        self.norm, self.drop, self.pre_norm = NORMS[norm](dim), nn.Dropout(dropout), pre_norm

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
        self.self_attn = _attention(cfg)
        self.ff = _feed_forward(cfg)
        self.sub_attn, self.sub_ff = (Sublayer(cfg.d_model, cfg.dropout, pre, cfg.norm_kind) for _ in range(2))

    def forward(self, x: Tensor, tokens: Tokens, mask: Tensor, bias: Tensor | None = None) -> Tensor:
        """x (N, D), the real tokens of a padded batch; mask (B, 1, 1, S); bias (1, H, S, S) relative positions
        or None -> (N, D). Only attention sees the padded layout."""
        a, h = self.self_attn, self.sub_attn.inner(x)
        q, k, v = (a.split(tokens.unpack(proj(h))) for proj in (a.q_proj, a.k_proj, a.v_proj))  # (B, H, S, Dh)
        x = self.sub_attn.merge(x, a.out_proj(tokens.pack(a.attend(q, k, v, mask, bias=bias)[0])))
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn, self.cross_attn = _attention(cfg), _attention(cfg)
        self.ff = _feed_forward(cfg)
        self.sub_self, self.sub_cross, self.sub_ff = (Sublayer(cfg.d_model, cfg.dropout, pre, cfg.norm_kind)
                                                      for _ in range(3))

    def forward(self, x: Tensor, self_kv: tuple[Tensor, Tensor], self_mask: Tensor | None,
                cross_kv: tuple[Tensor, Tensor], cross_mask: Tensor,
                need_weights: bool = False, self_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) with self-attention keys/values already covering every position it may see; self_bias
        (1, H, T, keys) relative positions or None.

        The cross-attention keys/values cover B / G sources, each shared by G consecutive rows (beam search's
        beams): their queries attend together as G * T positions, so the source is read once per step, not G
        times. -> (B, T, D) and, when asked, cross-attention weights (B, H, T, S)."""
        x = self.sub_self.merge(x, self.self_attn(self.sub_self.inner(x), *self_kv, self_mask, bias=self_bias)[0])
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
        relative, norm = cfg.positions == "relative", NORMS[cfg.norm_kind]
        absolute = None if relative else (cfg.positions, cfg.max_positions, D, cfg.position_offset)
        self.src_pos = Positions(*absolute) if absolute and frontend is None else None
        self.tgt_pos = Positions(*absolute) if absolute else None
        # T5: one bias table per stack, shared by all its layers (HF keeps it in layer 0); none in cross-attention
        self.src_rel = RelativePositionBias(cfg.rel_buckets, cfg.rel_max_distance, cfg.heads, True) \
            if relative and cfg.enc_layers else None
        self.tgt_rel = RelativePositionBias(cfg.rel_buckets, cfg.rel_max_distance, cfg.heads, False) \
            if relative else None
        self.src_embed_norm = norm(D) if cfg.embed_norm else nn.Identity()
        self.tgt_embed_norm = norm(D) if cfg.embed_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        pre = cfg.norm == "pre"
        self.enc_norm = norm(D) if pre else nn.Identity()  # pre-norm stacks end with a norm
        self.dec_norm = norm(D) if pre else nn.Identity()
        self.out_scale = D ** -0.5 if cfg.scale_output else None
        self.generator = nn.Linear(D, tgt_vocab, bias=cfg.output_bias)
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
            x = self.src_embed(tokens.pack(src)) * self.scale  # (N, D)
            if self.src_pos is not None:
                x = x + self.src_pos(tokens.pack(torch.arange(S, device=src.device).expand(B, S)))
            x = self.drop(self.src_embed_norm(x))
        else:
            feats, src_mask = self.frontend(src, src_mask)  # (B, M, D), (B, M)
            tokens = Tokens(src_mask)
            x = self.drop(self.src_embed_norm(tokens.pack(feats)))  # (N, D)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        bias = None
        if self.src_rel is not None:
            pos = torch.arange(src_mask.size(1), device=src_mask.device)
            bias = self.src_rel(pos, pos)  # (1, H, S, S)
        for layer in self.encoder:
            x = layer(x, tokens, mask, bias)
        x = self.enc_norm(x)
        memory = {"mask": src_mask}
        for i, layer in enumerate(self.decoder):  # cross-attention keys and values, once per source
            a = layer.cross_attn
            # (B, H, S, Dh), contiguous: attention over a strided view would copy it at every step
            memory[f"ck{i}"], memory[f"cv{i}"] = (a.split(tokens.unpack(p(x))).contiguous() for p in (a.k_proj,
                                                                                                       a.v_proj))
        return memory

    def max_target_tokens(self, memory: Memory) -> Tensor | None:
        """(B,) the decoder's position table (step t reads position t); None with relative positions (T5)."""
        if self.cfg.positions == "relative":
            return None
        return torch.full((memory["mask"].size(0),), self.cfg.max_positions, dtype=torch.long)

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
        bias = None
        if self.tgt_rel is not None:  # (1, H, 1, t + 1): query position t against keys 0 .. t
            keys = torch.arange(t + 1, device=pos.device)
            bias = self.tgt_rel(keys[t:], keys)
        for i, layer in enumerate(self.decoder):
            k, v = layer.self_attn.project_kv(layer.sub_self.inner(x))  # (B, H, 1, Dh)
            old = (None, None) if state is None else (state[f"k{i}"], state[f"v{i}"])
            new[f"k{i}"], new[f"v{i}"] = _append(old[0], k, t), _append(old[1], v, t)  # (B, H, C, Dh)
            kv = new[f"k{i}"][:, :, : t + 1], new[f"v{i}"][:, :, : t + 1]  # (B, H, t + 1, Dh)
            x, w = layer(x, kv, None, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask, attention, bias)
            if attention:
                attn.append(w[:, :, 0])  # (B, H, S)
        if attention:
            new["attn"] = torch.stack(attn, 1)  # (B, L, H, S)
        return self.generator(self._output(x))[:, 0], new

    def _embed_target(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """tokens, pos (B, T) -> (B, T, D)."""
        x = self.tgt_embed(tokens) * self.scale
        return self.drop(self.tgt_embed_norm(x if self.tgt_pos is None else x + self.tgt_pos(pos)))

    def _output(self, x: Tensor) -> Tensor:
        """The last decoder layer's output (B, T, D) -> the generator's input."""
        x = self.dec_norm(x)
        return x if self.out_scale is None else x * self.out_scale

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
        bias = self.tgt_rel(pos[0], pos[0]) if self.tgt_rel is not None else None  # (1, H, T, T)
        for i, layer in enumerate(self.decoder):
            kv = layer.self_attn.project_kv(layer.sub_self.inner(x))
            x, _ = layer(x, kv, causal, (memory[f"ck{i}"], memory[f"cv{i}"]), cross_mask, self_bias=bias)
        x = self._output(x)
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
