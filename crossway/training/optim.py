"""Optimizer and learning-rate schedules as plain functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases, norms and embeddings' padding rows are not special-cased beyond no decay on 1-D params."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-9)


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warm-up over `warmup` steps, then
    rsqrt: sqrt(warmup / step) (Vaswani et al. 2017); cosine: half a cosine down to 0 at `total`; constant."""
    s = step + 1
    if warmup > 0 and s <= warmup:
        return s / warmup
    if schedule == "rsqrt":
        return math.sqrt(max(1, warmup) / s)
    if schedule == "cosine":
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
