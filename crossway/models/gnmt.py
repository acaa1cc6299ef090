"""GNMT (Wu et al. 2016, "Google's Neural Machine Translation System", §3 and Fig. 1): stacked LSTMs with
residual connections, a bidirectional bottom encoder layer only, and attention computed from the bottom decoder
layer and fed to every layer above, behind the `encode` / `decode_step` protocol.

B batch, S source length, T target length, V target vocabulary, H LSTM size, E encoder output size (H; 2H with a
single encoder layer), L decoder layers, R decoding rows (B x G grouped rows).

Layers are counted from 1 at the bottom of each stack.
- Encoder: layer 1 is a bi-LSTM (2H out), layers 2.. are unidirectional LSTMs (H out), run on packed sequences
  so padding never enters the recurrence.
- Decoder: layer 1 reads [y_{t-1}; a_{t-1}]; its output s_t attends over the encoder outputs (Bahdanau, additive)
  -> context a_t, which joins the input of every layer above, [x_{l-1}; a_t], and of layer 1 at the next step.
  (The paper attends with the bottom output of the previous step; attending with the current one is
  tensorflow/nmt's gnmt_v2, whose upper layers see the context of the token they predict.)
- Residuals: with `residual`, layer l >= RESIDUAL_FROM of both stacks outputs LSTM_l(x_{l-1}) + x_{l-1}:
  "residual connections start from the layer third from the bottom in the encoder and decoder" (Fig. 1).
- The top decoder layer's output is the generator's input (the softmax sits on the top layer, Fig. 1). The
  decoder starts from zero states: the source reaches it through attention only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from crossway.data.tokenizers import PAD_ID
from crossway.models.attention import AdditiveAttention
from crossway.models.interface import Memory, State, check_sizes
from crossway.models.rnn import teacher_forced_steps

RESIDUAL_FROM = 3  # the first layer (counted from 1) with a residual connection, in both stacks (Wu et al. 2016)


@dataclass(frozen=True, kw_only=True)
class GNMTConfig:
    arch: str = "gnmt"
    emb_dim: int = 256
    hidden: int = 256  # every LSTM layer (each direction of the bottom encoder layer)
    enc_layers: int = 4  # the bottom one bidirectional, the others unidirectional
    dec_layers: int = 4
    residual: bool = True  # layers 3 and above of each stack add their input to their output
    dropout: float = 0.2  # on embeddings, on each upper layer's input and on the generator's input
    attn_dim: int = 0  # Bahdanau attention size; 0 = hidden
    tie_embeddings: bool = False  # output projection shares the target embedding matrix (Press & Wolf 2017)

    def __post_init__(self):
        check_sizes("model", self, ("emb_dim", "hidden", "enc_layers", "dec_layers"), ("dropout",))
        if self.attn_dim < 0:
            raise ValueError(f"model.attn_dim must be >= 0 (0 = model.hidden), got {self.attn_dim}")


def _packed(x: PackedSequence, data: Tensor) -> PackedSequence:
    """The same packing (lengths, order) around new data (N, ...)."""
    return PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)


class GNMTEncoder(nn.Module):
    def __init__(self, vocab: int, emb_dim: int, hidden: int, layers: int, residual: bool, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        self.bottom = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.layers = nn.ModuleList(nn.LSTM(2 * hidden if n == 2 else hidden, hidden, batch_first=True)
                                    for n in range(2, layers + 1))
        self.residual = residual
        self.out_dim = hidden if layers > 1 else 2 * hidden  # E

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """src (B, S), src_mask (B, S) -> outputs (B, S, E), zero at padding.

        One packing for the whole stack: every layer, dropout and residual works on the packed (N, .) data of
        the real tokens, so a sentence encodes the same alone and in a padded batch."""
        lengths = src_mask.sum(1).cpu()
        x = pack_padded_sequence(self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False)
        x = self.bottom(x)[0]  # (N, 2H)
        for n, lstm in enumerate(self.layers, start=2):
            out = lstm(_packed(x, self.drop(x.data)))[0]  # (N, H)
            x = _packed(out, out.data + x.data) if self.residual and n >= RESIDUAL_FROM else out
        return pad_packed_sequence(x, batch_first=True, total_length=src.size(1))[0]  # (B, S, E)


class GNMT(nn.Module):
    def __init__(self, cfg: GNMTConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.encoder = GNMTEncoder(src_vocab, cfg.emb_dim, H, cfg.enc_layers, cfg.residual, cfg.dropout)
        E = self.encoder.out_dim
        self.embed = nn.Embedding(tgt_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        # LSTMCell: one step of a single-layer nn.LSTM costs 3x as much forward + backward on a CPU (20 vs 6.7 ms
        # for 64 rows, 512 inputs, H 256, one thread), and the decoder runs one step at a time
        self.layers = nn.ModuleList(nn.LSTMCell((cfg.emb_dim if n == 1 else H) + E, H)
                                    for n in range(1, cfg.dec_layers + 1))
        self.attention = AdditiveAttention(H, E, cfg.attn_dim or H)
        self.bottleneck = nn.Linear(H, cfg.emb_dim) if cfg.tie_embeddings else None
        self.generator = nn.Linear(cfg.emb_dim if cfg.tie_embeddings else H, tgt_vocab)
        if cfg.tie_embeddings:
            self.generator.weight = self.embed.weight

    # --- protocol -------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        enc = self.encoder(src, src_mask)  # (B, S, E)
        return {"mask": src_mask, "enc": enc, "keys": self.attention.project_keys(enc)}  # keys (B, S, A)

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """The attention weights are computed anyway, so state["attn"] (R, S) is always there."""
        features, state = self._step(prev_tokens, memory, state)
        return self.generator(self._features(features)), state

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        return teacher_forced_steps(self, src, src_mask, tgt_in, features)

    # --- internals ------------------------------------------------------------------------------------
    def _init_state(self, memory: Memory, rows: int) -> State:
        """Zero states h, c (R, L, H) and context a_0 (R, E) for `rows` rows; memory row g serves rows
        g*G .. g*G + G - 1 (G = rows // memory rows), which AdditiveAttention reads from the row count."""
        enc = memory["enc"]
        h = enc.new_zeros(rows, self.cfg.dec_layers, self.cfg.hidden)
        return {"h": h, "c": torch.zeros_like(h), "ctx": enc.new_zeros(rows, enc.size(-1))}

    def _step(self, prev: Tensor, memory: Memory, state: State | None) -> tuple[Tensor, State]:
        state = self._init_state(memory, prev.size(0)) if state is None else state
        x, ctx = self.drop(self.embed(prev)), state["ctx"]  # (R, emb), a_{t-1} (R, E)
        hs, cs, attn = [], [], None
        for n, cell in enumerate(self.layers, start=1):
            inp = torch.cat([x if n == 1 else self.drop(x), ctx], -1)  # (R, in + E)
            h, c = cell(inp, (state["h"][:, n - 1], state["c"][:, n - 1]))  # (R, H) each
            hs.append(h)
            cs.append(c)
            if n == 1:  # the bottom output s_t attends: a_t for the layers above and layer 1's next step
                ctx, attn = self.attention(h, memory["keys"], memory["enc"], memory["mask"])  # (R, E), (R, S)
            x = h + x if self.cfg.residual and n >= RESIDUAL_FROM else h  # (R, H)
        new = {"h": torch.stack(hs, 1), "c": torch.stack(cs, 1), "ctx": ctx, "attn": attn}  # h, c (R, L, H)
        return self.drop(x), new

    def _features(self, out: Tensor) -> Tensor:
        """The generator's input: the top layer's output, through the bottleneck when embeddings are tied."""
        return self.bottleneck(out) if self.bottleneck is not None else out


def build_gnmt(cfg: GNMTConfig, src_vocab: int, tgt_vocab: int) -> GNMT:
    return GNMT(cfg, src_vocab, tgt_vocab)
