"""Listen, Attend and Spell (Chan et al. 2016): speech frames in, characters (or any tokens) out, built from the RNN
parts behind the same `encode` / `decode_step` protocol, so every search, ensemble and scorer decodes it unchanged.

B batch, T frames, F features per frame (log-mel bins), H listener size per direction, E = 2H (the speller's
size), L listener layers (bottom_layers + pyramid), M memory positions, V vocabulary.

- The listener (`PyramidalEncoder`) runs `bottom_layers` BiLSTM layers over the frames (after stacking
  `frame_stack` frames into one, an optional cheaper start), then `pyramid` pyramidal BiLSTM layers, each reading
  adjacent pairs of the layer below's outputs side by side, so M = ceil(T / (frame_stack * 2**pyramid)) per row
  (the paper: 1 + 3 layers, 8x fewer positions to attend over; with a plain BLSTM listener it converged too slowly).
- The speller is RNNSeq2Seq's decoder, E = 2H wide, `dec_layers` deep, started from the listener's top
  `dec_layers` layers' final states (forward: the last real position, backward: the first). The paper's attention
  is content-based with the current state s_i, feeds the context c_{i-1} into the next step and reads the output
  from [s_i; c_i]: Luong's form, whose input feeding passes tanh(W [c_{i-1}; s_{i-1}]) (`luong_general`: a bilinear
  score where the paper has two MLPs; `bahdanau` attends with s_{i-1} instead).

src (B, T, F) float frames, src_mask (B, T) bool, real frames first (right padding).
memory: "mask" (B, M) real listener positions, "enc" (B, M, E), "keys" (B, M, E | A), "h0"/"c0" (B, dec_layers, E).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crossway.models.interface import check_sizes
from crossway.models.rnn import ATTENTIONS, CELLS, RNNConfig, RNNSeq2Seq

LAS_ATTENTIONS = tuple(a for a in ATTENTIONS if a != "none")  # a listener without attention is not LAS


@dataclass(frozen=True, kw_only=True)
class LASConfig:
    arch: str = "las"
    cell: str = "lstm"  # lstm | gru, listener and speller
    hidden: int = 256  # listener size per direction; the speller's is 2 x hidden
    frame_stack: int = 1  # frames stacked side by side (and time divided) before the first layer
    bottom_layers: int = 1  # plain BiLSTM layers over the frames
    pyramid: int = 3  # pyramidal BiLSTM layers, each halving time
    dec_layers: int = 2  # speller layers, started from the listener's top dec_layers layers' final states
    emb_dim: int = 128
    attention: str = "luong_general"  # bahdanau | luong_dot | luong_general
    attn_dim: int = 0  # Bahdanau attention size; 0 = the speller size
    dropout: float = 0.2

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"model.cell must be one of {list(CELLS)}, not {self.cell!r}")
        if self.attention not in LAS_ATTENTIONS:
            raise ValueError(f"model.attention must be one of {list(LAS_ATTENTIONS)}, not {self.attention!r}")
        check_sizes("model", self, ("hidden", "frame_stack", "dec_layers", "emb_dim"), ("dropout",))
        if self.bottom_layers < 0 or self.pyramid < 0 or self.attn_dim < 0:
            raise ValueError(f"model.bottom_layers, model.pyramid and model.attn_dim must be >= 0 (got "
                             f"{self.bottom_layers}, {self.pyramid}, {self.attn_dim})")
        if self.bottom_layers + self.pyramid < self.dec_layers:
            raise ValueError(f"model.bottom_layers + model.pyramid ({self.bottom_layers + self.pyramid}) must be at "
                             f"least model.dec_layers ({self.dec_layers}): each speller layer starts from a listener "
                             f"layer's final state")


def stack_frames(x: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x (B, T, D), zero past each row's length -> (B, ceil(T / k), k * D), k consecutive positions side by side,
    and the new lengths (B,) ceil(L / k): an odd tail is kept, zero-padded, so even a 1-frame row keeps a position
    and a row's result depends on its own length only, never on the batch's."""
    B, T, D = x.shape
    x = F.pad(x, (0, 0, 0, -T % k))  # (B, k * ceil(T / k), D)
    return x.reshape(B, -1, k * D), (lengths + k - 1) // k


class PyramidalEncoder(nn.Module):
    """The listener: (B, T, F) frames -> (B, M, 2H) outputs, final states per layer and the (B, M) mask."""

    def __init__(self, n_feats: int, hidden: int, bottom_layers: int, pyramid: int, cell: str, dropout: float,
                 frame_stack: int = 1):
        super().__init__()
        rnn, D = CELLS[cell], n_feats * frame_stack
        self.bottom = rnn(D, hidden, bottom_layers, batch_first=True, bidirectional=True,
                          dropout=dropout if bottom_layers > 1 else 0.0) if bottom_layers else None
        width = 2 * hidden if bottom_layers else D  # what the first pyramid layer pairs up
        self.pyramid = nn.ModuleList(rnn(2 * (width if i == 0 else 2 * hidden), hidden, batch_first=True,
                                         bidirectional=True) for i in range(pyramid))
        self.drop = nn.Dropout(dropout)
        self.frame_stack = frame_stack

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """-> out (B, M, 2H), h (B, L, 2H), c (B, L, 2H) for LSTM else None, mask (B, M).

        Packed sequences and zeroed padding: padding never enters a recurrence nor a pair, so an utterance
        encodes the same alone and in a padded batch.
        """
        x = src.masked_fill(~src_mask[..., None], 0)  # (B, T, F)
        lengths = src_mask.sum(1).cpu()  # (B,)
        if self.frame_stack > 1:
            x, lengths = stack_frames(x, lengths, self.frame_stack)  # (B, T / k, k F)
        finals = []
        if self.bottom is not None:
            x, final = self._run(self.bottom, x, lengths)  # (B, T', 2H)
            finals.append(final)
        for rnn in self.pyramid:
            x, lengths = stack_frames(self.drop(x) if finals else x, lengths, 2)  # (B, ceil(T' / 2), 2 width)
            x, final = self._run(rnn, x, lengths)
            finals.append(final)
        h = torch.cat([self._merge(f[0] if isinstance(f, tuple) else f) for f in finals], 1)  # (B, L, 2H)
        c = torch.cat([self._merge(f[1]) for f in finals], 1) if isinstance(finals[0], tuple) else None
        mask = torch.arange(x.size(1)) < lengths[:, None]  # (B, M)
        return x, h, c, mask.to(src.device)

    @staticmethod
    def _run(rnn: nn.Module, x: Tensor, lengths: Tensor):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # zeros past each length
        return out, final

    @staticmethod
    def _merge(h: Tensor) -> Tensor:
        """(layers * 2, B, H) -> (B, layers, 2H): forward and backward final states side by side per layer."""
        B = h.size(1)
        return h.view(-1, 2, B, h.size(-1)).permute(2, 0, 1, 3).reshape(B, -1, 2 * h.size(-1))


def build_las(cfg: LASConfig, n_mels: int, vocab: int) -> RNNSeq2Seq:
    """model.arch "las": the pyramidal listener under RNNSeq2Seq's attentive decoder (the speller)."""
    listener = PyramidalEncoder(n_mels, cfg.hidden, cfg.bottom_layers, cfg.pyramid, cfg.cell, cfg.dropout,
                                cfg.frame_stack)
    speller = RNNConfig(cell=cfg.cell, attention=cfg.attention, emb_dim=cfg.emb_dim, hidden=cfg.hidden,
                        layers=cfg.dec_layers, bidirectional=True, dropout=cfg.dropout, attn_dim=cfg.attn_dim)
    return RNNSeq2Seq(speller, 0, vocab, encoder=listener)
