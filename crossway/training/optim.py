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


def lr_factor(step: int, schedule: str, warmup: int, total: int, elapsed: float = 0.0) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warm-up over `warmup` steps, then
    rsqrt: sqrt(warmup / step) (Vaswani et al. 2017); cosine: half a cosine down to 0 at the end; linear: a
    straight line down to 0 at the end; constant.

    The end of cosine and linear is `total` steps or, when training has a time budget, the moment it is spent,
    whichever comes first: `elapsed` is the fraction of the time left after warm-up that is used (0 without a
    budget; see loop._budget_used). Decaying to zero exactly when the budget runs out is what Li et al. 2020
    ("Budgeted Training") found to work best under a fixed budget; a step count would have to be guessed from a
    throughput that depends on the machine."""
    s = step + 1
    if warmup > 0 and s <= warmup:
        return s / warmup
    if schedule == "rsqrt":
        return math.sqrt(max(1, warmup) / s)
    progress = min(1.0, max((s - warmup) / max(1, total - warmup), elapsed))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
