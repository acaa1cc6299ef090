"""RNN encoder-decoders: the fixed-context model of Sutskever et al. (2014), Bahdanau attention (2015) and
Luong attention with input feeding (2015), all behind the `encode` / `decode_step` protocol.

B batch, S source length, T target length, V target vocabulary, L layers, E encoder output size
(hidden x directions; the decoder's hidden size is also E so the final encoder state can start it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crossway.data.tokenizers import PAD_ID
from crossway.models.attention import AdditiveAttention, LuongAttention
from crossway.models.interface import Memory, State, check_sizes

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
ATTENTIONS = ("none", "bahdanau", "luong_dot", "luong_general")


@dataclass(frozen=True, kw_only=True)
class RNNConfig:
    arch: str = "rnn"
    cell: str = "gru"  # gru | lstm
    attention: str = "bahdanau"  # none | bahdanau | luong_dot | luong_general
    emb_dim: int = 128
    hidden: int = 256  # per direction
    layers: int = 1  # decoder layers, and encoder layers unless enc_layers is set
    enc_layers: int = 0  # 0 = layers; more than `layers`: the decoder starts from the top layers' final states
    bidirectional: bool = True
    dropout: float = 0.2
    attn_dim: int = 0  # Bahdanau attention size; 0 = the decoder size
    tie_embeddings: bool = False  # output projection shares the target embedding matrix (Press & Wolf 2017)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"model.cell must be one of {list(CELLS)}, not {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"model.attention must be one of {list(ATTENTIONS)}, not {self.attention!r}")
        check_sizes("model", self, ("emb_dim", "hidden", "layers"), ("dropout",))
        if self.enc_layers and self.enc_layers < self.layers:
            raise ValueError(f"model.enc_layers ({self.enc_layers}) must be 0 or at least model.layers "
                             f"({self.layers}): each decoder layer starts from an encoder layer's final state")


class RNNEncoder(nn.Module):
    def __init__(self, vocab: int, emb_dim: int, hidden: int, layers: int, bidirectional: bool, cell: str,
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        self.rnn = CELLS[cell](emb_dim, hidden, layers, batch_first=True, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        self.layers, self.dirs = layers, 2 if bidirectional else 1

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> outputs (B, S, E), final h (B, L, E) and, for LSTM, final c (B, L, E).

        Packed sequences: padding never enters the recurrence, so the final state is that of the last real
        token whatever the batch (the backward direction starts at the last real token, not at padding).
        """
        lengths = src_mask.sum(1).cpu()
        packed = pack_padded_sequence(self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, E)
        h, c = final if isinstance(final, tuple) else (final, None)
        return out, self._merge(h), None if c is None else self._merge(c)

    def _merge(self, h: Tensor) -> Tensor:
        """(L * dirs, B, H) -> (B, L, dirs * H): forward and backward final states side by side per layer."""
        B = h.size(1)
        return h.view(self.layers, self.dirs, B, -1).permute(2, 0, 1, 3).reshape(B, self.layers, -1)


class RNNSeq2Seq(nn.Module):
    """Encoder-decoder with an optional attention. `attention="none"` is the fixed context-vector model:
    the decoder sees the source only through its initial state, the final encoder state.

    `encoder` replaces the token RNNEncoder (src_vocab is then unused) for other sources, e.g. LAS's pyramidal
    listener over speech frames: (src, src_mask) -> (out (B, M, E), h (B, L, E), c (B, L, E) | None, mask (B, M)),
    its final states for at least `layers` layers and its own mask over the M memory positions, real ones first.
    """

    def __init__(self, cfg: RNNConfig, src_vocab: int, tgt_vocab: int, encoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        E = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.encoder = encoder if encoder is not None else RNNEncoder(
            src_vocab, cfg.emb_dim, cfg.hidden, cfg.enc_layers or cfg.layers, cfg.bidirectional, cfg.cell,
            cfg.dropout)
        self.embed = nn.Embedding(tgt_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        kind = cfg.attention
        rnn_in = cfg.emb_dim + (E if kind != "none" else 0)  # Bahdanau: context; Luong: input feeding
        self.rnn = CELLS[cfg.cell](rnn_in, E, cfg.layers, batch_first=True,
                                   dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        if kind == "bahdanau":
            self.attention = AdditiveAttention(E, E, cfg.attn_dim or E)
            self.combine = nn.Linear(E + E + cfg.emb_dim, E)  # deep output: state, context, previous token
        elif kind.startswith("luong"):
            self.attention = LuongAttention(E, E, kind.split("_")[1])
            self.combine = nn.Linear(E + E, E)  # h~_t = tanh(W_c [c_t; s_t])
        else:
            self.attention, self.combine = None, None
        self.bottleneck = nn.Linear(E, cfg.emb_dim) if cfg.tie_embeddings else None
        self.generator = nn.Linear(cfg.emb_dim if cfg.tie_embeddings else E, tgt_vocab)
        if cfg.tie_embeddings:
            self.generator.weight = self.embed.weight

    # --- protocol -------------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        out, h, c, *mask = self.encoder(src, src_mask)  # h, c (B, L_enc, E)
        mask = mask[0] if mask else src_mask  # (B, M): a token RNNEncoder keeps the source positions
        top = self.cfg.layers  # the decoder's layers start from the top encoder layers' final states
        memory = {"mask": mask, "h0": h[:, -top:]}
        if c is not None:
            memory["c0"] = c[:, -top:]
        if self.attention is not None:
            memory["enc"] = out
            memory["keys"] = self.attention.project_keys(out)
        return memory

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """The attention weights are computed anyway, so state["attn"] is always there (attention is ignored)."""
        features, state = self._step(prev_tokens, memory, state)
        return self.generator(self._features(features)), state

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        return teacher_forced_steps(self, src, src_mask, tgt_in, features)

    # --- internals ------------------------------------------------------------------------------------
    def _init_state(self, memory: Memory, rows: int) -> State:
        """The decoder starts from the final encoder state, repeated for each of the `rows` // B rows decoded
        against one source (beam search's beams)."""
        group = rows // memory["h0"].size(0)
        state = {"h": memory["h0"].repeat_interleave(group, 0)}
        if "c0" in memory:
            state["c"] = memory["c0"].repeat_interleave(group, 0)
        if self.cfg.attention.startswith("luong"):
            state["feed"] = torch.zeros_like(state["h"][:, -1])  # h~_0 = 0
        return state

    def _run_rnn(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One recurrent step. x (B, I); hidden states are kept batch-first (B, L, E) in the state."""
        h = state["h"].transpose(0, 1).contiguous()  # (L, B, E)
        hx = (h, state["c"].transpose(0, 1).contiguous()) if "c" in state else h
        out, final = self.rnn(x.unsqueeze(1), hx)
        new = dict(state)
        if isinstance(final, tuple):
            new["h"], new["c"] = final[0].transpose(0, 1), final[1].transpose(0, 1)
        else:
            new["h"] = final.transpose(0, 1)
        return out.squeeze(1), new  # top layer output (B, E)

    def _step(self, prev: Tensor, memory: Memory, state: State | None) -> tuple[Tensor, State]:
        state = self._init_state(memory, prev.size(0)) if state is None else state
        emb = self.drop(self.embed(prev))  # (B, emb)
        kind = self.cfg.attention
        if kind == "none":
            out, state = self._run_rnn(emb, state)
            return self.drop(out), state
        if kind == "bahdanau":
            # Bahdanau et al. 2015: attend with the previous state s_{t-1}, feed the context into the RNN
            ctx, attn = self.attention(state["h"][:, -1], memory["keys"], memory["enc"], memory["mask"])
            out, state = self._run_rnn(torch.cat([emb, ctx], -1), state)
            feat = torch.tanh(self.combine(torch.cat([out, ctx, emb], -1)))
        else:
            # Luong et al. 2015: input feeding concatenates the previous attentional vector h~_{t-1}
            out, state = self._run_rnn(torch.cat([emb, state["feed"]], -1), state)
            ctx, attn = self.attention(out, memory["keys"], memory["enc"], memory["mask"])
            feat = torch.tanh(self.combine(torch.cat([ctx, out], -1)))
            state["feed"] = feat
        state["attn"] = attn  # (B, S)
        return self.drop(feat), state

    def _features(self, out: Tensor) -> Tensor:
        """The generator's input: the decoder output, through the bottleneck when embeddings are tied."""
        return self.bottleneck(out) if self.bottleneck is not None else out


def teacher_forced_steps(model: nn.Module, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool) -> Tensor:
    """An RNN decoder's teacher-forced pass: the model's own `_step` (the one decode_step runs) at every target
    position, then `_features` and the output layer once for all steps. -> (B, T, F) or (B, T, V)."""
    memory, state, feats = model.encode(src, src_mask), None, []
    for t in range(tgt_in.size(1)):
        f, state = model._step(tgt_in[:, t], memory, state)
        feats.append(f)
    f = model._features(torch.stack(feats, 1))  # (B, T, F)
    return f if features else model.generator(f)  # (B, T, V): one output projection for all steps


def build_rnn(cfg: RNNConfig, src_vocab: int, tgt_vocab: int) -> RNNSeq2Seq:
    return RNNSeq2Seq(cfg, src_vocab, tgt_vocab)
