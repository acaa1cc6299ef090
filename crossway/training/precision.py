"""Mixed precision: autocast for the forward pass and, for fp16 on a GPU, a gradient scaler.

fp32 does nothing; bf16 autocasts matmuls to bfloat16 on CPU or GPU (no scaler: bf16 has fp32's range);
fp16 autocasts to float16 on a GPU and scales the loss so small gradients do not underflow.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from crossway.errors import ConfigError

# bf16 matrix products on CPU run in oneDNN, which keeps a compiled kernel per product shape (1,024 by default).
# Token-budget batches bring new shapes every step, so the cache rarely hits and grows: after 90 bf16 updates of
# the 3+3 Bible model a process held 4.2 GB with the default, 2.6 GB with 64 (measured; still growing, for
# reasons beyond this cache). Read at oneDNN's first use, so it is set when crossway is imported; a value the
# user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


class Precision:
    def __init__(self, kind: str, device: torch.device):
        if kind == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a GPU (train.device=cuda); on CPU use bf16")
        self.kind, self.device = kind, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
        self.scaler = torch.amp.GradScaler(device.type) if kind == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the update (with fp16, the scaler skips it when gradients overflowed and lowers the scale)."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
