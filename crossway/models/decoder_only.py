"""A decoder-only Transformer over `source bos target` behind the `encode` / `decode_step` protocol: one causal
stack reads the source, then the target, with bos (the token search feeds first and tgt_in starts with) as the
separator. With `prefix_lm` the source positions attend to each other in both directions (a prefix LM, Raffel et
al. 2020, section 3.2.1); targets always attend to the whole source and causally to earlier targets.

B batch, n memory rows, G = B / n rows per memory row, S source length, T target length, L = S + T, N real
positions, D model size, H heads, Dh = D / H, V target vocabulary.

Source and target have their own embedding tables (one with `share_embeddings`); the output layer predicts target
tokens only, so the loss is on targets only. Positions run per row: source token j at j, target token k (k = 0 is
bos) at len_b + k, so padding a source never shifts its target.

`encode` runs the source through every layer and keeps per layer i its keys and values, `memory["k{i}"]`,
`memory["v{i}"]` (n, H, S, Dh); `decode_step` keeps the target positions' keys and values in `state["k{i}"]`,
`state["v{i}"]` (B, H, C, Dh), a buffer grown in place as the Transformer's. A step's query attends over its
memory row's source keys and its own target keys with one softmax: the G rows of a group score the shared source
keys together (one (G, Dh) x (Dh, S) product per group and head), so beams never copy the source cache.
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
from crossway.models.transformer import Sublayer, Tokens, _append


@dataclass(frozen=True, kw_only=True)
class DecoderOnlyConfig:
    arch: str = "decoder_only"
    d_model: int = 256
    heads: int = 4
    ff_dim: int = 1024
    layers: int = 6
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation_dropout: float | None = None  # inside the feed-forward block, after the activation; None: = dropout
    activation: str = "relu"  # relu | gelu (erf) | silu | gelu_tanh
    norm: str = "pre"  # pre (a final norm before the output layer) | post
    positions: str = "sinusoidal"  # sinusoidal | sinusoidal_split | learned
    max_positions: int = 1024  # source + target positions
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model)
    prefix_lm: bool = False  # source positions attend to each other in both directions
    share_embeddings: bool = False  # one table for source and target tokens (needs equal vocabularies)
    tie_embeddings: bool = True  # target embedding = output layer (Press & Wolf 2017)

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', not {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions must be one of {list(POSITIONS)}, not {self.positions!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {list(ACTIVATIONS)}, not {self.activation!r}")
        check_sizes("model", self, ("d_model", "heads", "ff_dim", "layers", "max_positions"),
                    ("dropout", "attn_dropout"))
        if self.activation_dropout is not None and not 0 <= self.activation_dropout < 1:
            raise ValueError(f"model.activation_dropout must be in [0, 1), got {self.activation_dropout}")
        if self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.heads={self.heads}")


class Block(nn.Module):
    """Self-attention and feed-forward, pre- or post-norm, over the real positions of a padded layout."""

    def __init__(self, cfg: DecoderOnlyConfig):
        super().__init__()
        pre, ff_drop = cfg.norm == "pre", cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, ff_drop, cfg.activation)
        self.sub_attn, self.sub_ff = Sublayer(cfg.d_model, cfg.dropout, pre), Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, tokens: Tokens, mask: Tensor, tail: int | None = None) -> tuple[Tensor, ...]:
        """x (N, D), the real positions of a (B, L) layout; mask (B, 1, L, L) -> x (N, D) and the keys and values
        (B, H, L, Dh). With tail=T only the last T positions query and x is (B, T, D) (forward's last layer: no
        one reads its source outputs); with tail=0 none do and x comes back unchanged (encode's last layer)."""
        a, h = self.self_attn, self.sub_attn.inner(x)
        k, v = (a.split(tokens.unpack(p(h))) for p in (a.k_proj, a.v_proj))  # (B, H, L, Dh)
        if tail == 0:
            return x, k, v
        if tail is None:
            q = a.split(tokens.unpack(a.q_proj(h)))  # (B, H, L, Dh)
            x = self.sub_attn.merge(x, a.out_proj(tokens.pack(a.attend(q, k, v, mask)[0])))
        else:
            x, h = tokens.unpack(x)[:, -tail:], tokens.unpack(h)[:, -tail:]  # (B, T, D)
            x = self.sub_attn.merge(x, a(h, k, v, mask[:, :, -tail:])[0])
        return self.sub_ff.merge(x, self.ff(self.sub_ff.inner(x))), k, v


class DecoderOnly(nn.Module):
    def __init__(self, cfg: DecoderOnlyConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.cfg, D = cfg, cfg.d_model
        self.scale = math.sqrt(D) if cfg.scale_embeddings else 1.0
        self.tgt_embed = nn.Embedding(tgt_vocab, D, padding_idx=PAD_ID)
        if cfg.share_embeddings:
            if src_vocab != tgt_vocab:
                raise ValueError(f"model.share_embeddings needs one vocabulary ({src_vocab} != {tgt_vocab} tokens)")
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = nn.Embedding(src_vocab, D, padding_idx=PAD_ID)
        self.pos = Positions(cfg.positions, cfg.max_positions, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D) if cfg.norm == "pre" else nn.Identity()
        self.generator = nn.Linear(D, tgt_vocab)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        for emb in {id(e): e for e in (self.src_embed, self.tgt_embed)}.values():
            nn.init.normal_(emb.weight, std=D ** -0.5)  # unit variance after the sqrt(D) scale
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()
        if cfg.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def _mask(self, src_mask: Tensor, T: int) -> Tensor:
        """src_mask (B, S) -> (B, 1, L, L), True = attend: no padded source key, causal (or, prefix LM, source
        to source both ways). A padded position also sees itself, so no row is empty (SDPA would give NaN)."""
        B, S = src_mask.shape
        i = torch.arange(S + T, device=src_mask.device)
        allowed = i[None, :] <= i[:, None]  # (L, L) causal
        if self.cfg.prefix_lm:
            allowed = allowed | ((i[:, None] < S) & (i[None, :] < S))
        keys = torch.cat([src_mask, src_mask.new_ones(B, T)], 1)  # (B, L)
        return ((allowed & keys[:, None, :]) | torch.eye(S + T, dtype=torch.bool, device=i.device))[:, None]

    # --- protocol -------------------------------------------------------------------------------------
    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        """One pass over [src (B, S) | tgt_in (B, T)] -> logits (B, T, V) of the target part, or with
        features=True the generator's input (B, T, D)."""
        (B, S), T = src.shape, tgt_in.size(1)
        tokens = Tokens(torch.cat([src_mask, src_mask.new_ones(B, T)], 1))  # (B, L) -> N
        lengths = src_mask.sum(1, keepdim=True)  # (B, 1)
        pos = torch.cat([torch.arange(S, device=src.device).expand(B, S),
                         lengths + torch.arange(T, device=src.device)], 1)  # (B, L)
        x = tokens.pack(torch.cat([self.src_embed(src), self.tgt_embed(tgt_in)], 1))  # (N, D)
        x = self.drop(x * self.scale + self.pos(tokens.pack(pos)))
        mask = self._mask(src_mask, T)
        for i, layer in enumerate(self.layers):
            x, _, _ = layer(x, tokens, mask, T if i == len(self.layers) - 1 else None)
        x = self.norm(x)  # (B, T, D)
        return x if features else self.generator(x)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        B, S = src.shape
        tokens = Tokens(src_mask)
        ids, pos = tokens.pack(src), tokens.pack(torch.arange(S, device=src.device).expand(B, S))  # (N,)
        x = self.drop(self.src_embed(ids) * self.scale + self.pos(pos))  # (N, D)
        mask = self._mask(src_mask, 0)
        memory = {"mask": src_mask, "len": src_mask.sum(1)}  # len (B,)
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, tokens, mask, 0 if i == len(self.layers) - 1 else None)
            memory[f"k{i}"], memory[f"v{i}"] = k.contiguous(), v.contiguous()  # (B, H, S, Dh)
        # added to the source scores: 0 at real positions, -inf at padding; (B, 1, 1, S)
        memory["bias"] = k.new_zeros(B, 1, 1, S).masked_fill(~src_mask[:, None, None], -math.inf)
        return memory

    def max_target_tokens(self, memory: Memory) -> Tensor:
        """(B,) the positions left after each row's source (output step t reads position source length + t)."""
        return self.cfg.max_positions - memory["len"].cpu()

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """prev (B,) -> logits (B, V); with attention=True state["attn"] (B, layers, H, S): the source part of each
        step's joint softmax (it sums to 1 with the weights on earlier targets)."""
        B, n = prev_tokens.size(0), memory["len"].size(0)
        G = B // n
        pos = state["pos"] if state is not None else prev_tokens.new_zeros(B)
        t = int(pos[0]) if state is not None else 0  # every row is at the same step
        start = memory["len"].repeat_interleave(G) if G > 1 else memory["len"]  # (B,) source lengths
        x = self.drop(self.tgt_embed(prev_tokens) * self.scale + self.pos(start + pos))[:, None]  # (B, 1, D)
        new: State = {"pos": pos + 1}
        attn = []
        for i, layer in enumerate(self.layers):
            a, h = layer.self_attn, layer.sub_attn.inner(x)
            q, k, v = (p(h) for p in (a.q_proj, a.k_proj, a.v_proj))  # (B, 1, D)
            old = (None, None) if state is None else (state[f"k{i}"], state[f"v{i}"])
            new[f"k{i}"], new[f"v{i}"] = _append(old[0], a.split(k), t), _append(old[1], a.split(v), t)
            out, w = self._joint(a, q, (memory[f"k{i}"], memory[f"v{i}"]), memory["bias"],
                                 (new[f"k{i}"][:, :, : t + 1], new[f"v{i}"][:, :, : t + 1]))
            x = layer.sub_attn.merge(x, a.out_proj(out))
            x = layer.sub_ff.merge(x, layer.ff(layer.sub_ff.inner(x)))
            attn.append(w)
        if attention:
            new["attn"] = torch.stack(attn, 1)  # (B, L, H, S)
        return self.generator(self.norm(x))[:, 0], new

    def _joint(self, a: MultiHeadAttention, q: Tensor, src_kv: tuple[Tensor, Tensor], bias: Tensor,
               tgt_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One softmax over a row's memory source keys and its own target keys. q (B, 1, D); src_kv (n, H, S, Dh),
        each memory row shared by G consecutive rows; bias (n, 1, 1, S), -inf at padding; tgt_kv (B, H, t, Dh)
        -> output (B, 1, D) before the output projection, source weights (B, H, S)."""
        (n, H, S, Dh), B = src_kv[0].shape, q.size(0)
        G = B // n
        q = q * Dh ** -0.5
        s_src = q.view(n, G, H, Dh).transpose(1, 2) @ src_kv[0].transpose(2, 3) + bias  # (n, H, G, S)
        s_tgt = a.split(q) @ tgt_kv[0].transpose(2, 3)  # (B, H, 1, t)
        scores = torch.cat([s_src.transpose(1, 2).reshape(B, H, S), s_tgt[:, :, 0]], 2)  # (B, H, S + t)
        w = torch.softmax(scores, -1)
        wd = nn.functional.dropout(w, a.dropout, self.training)
        out_src = wd[..., :S].view(n, G, H, S).transpose(1, 2) @ src_kv[1]  # (n, H, G, Dh)
        out_tgt = wd[:, :, None, S:] @ tgt_kv[1]  # (B, H, 1, Dh)
        out = out_src.transpose(1, 2).reshape(B, 1, H * Dh) + out_tgt.reshape(B, 1, H * Dh)
        return out, w[..., :S]


def build_decoder_only(cfg: DecoderOnlyConfig, src_vocab: int, tgt_vocab: int) -> DecoderOnly:
    return DecoderOnly(cfg, src_vocab, tgt_vocab)
