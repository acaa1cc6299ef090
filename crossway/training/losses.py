"""Losses. B batch, T target length, V vocabulary."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from crossway.data.tokenizers import PAD_ID


def label_smoothed_ce(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor, int]:
    """logits (B, T, V), target (B, T) with PAD_ID at padding -> (loss sum, nll sum, non-pad tokens).

    Padding positions contribute nothing (ignore_index); smoothing spreads `smoothing` mass uniformly over
    the vocabulary (Szegedy et al. 2016). The nll sum (no smoothing) is what perplexity is computed from.
    """
    flat_logits, flat_target = logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_target, ignore_index=PAD_ID, label_smoothing=smoothing,
                           reduction="sum")
    nll = F.cross_entropy(flat_logits.detach(), flat_target, ignore_index=PAD_ID, reduction="sum")
    return loss, nll, int((flat_target != PAD_ID).sum())
