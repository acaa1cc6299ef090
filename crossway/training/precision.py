"""Mixed precision: which one to use on this hardware, autocast for the forward pass and, for fp16 on a GPU,
a gradient scaler.

fp32 does nothing; bf16 autocasts matmuls to bfloat16 on CPU or GPU (no scaler: bf16 has fp32's range);
fp16 autocasts to float16 on a GPU and scales the loss so small gradients do not underflow. `auto` (the
default) picks bf16 where the hardware runs it natively (a GPU with bf16; a CPU with AMX or AVX512-BF16, or an
Arm CPU with BF16) and fp32 elsewhere. On a CPU without those instructions bf16 is emulated: on an AVX2-only
AMD EPYC the Bible Transformer trained 16 times slower than in fp32, the G2P LSTM 3.7 times (docs/results.md).

On such a CPU an explicit bf16 still trains, but oneDNN has no bf16 LSTM kernel there ("could not create a
primitive descriptor for the LSTM forward propagation primitive"), so `Precision.prepare` runs every LSTM in
fp32 with autocast off; other modules keep autocast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossway.errors import ConfigError

# bf16 matrix products on CPU run in oneDNN, which keeps a compiled kernel per product shape (1,024 by default).
# Token-budget batches bring new shapes every step, so the cache rarely hits and grows: after 90 bf16 updates of
# the 3+3 Bible model a process held 4.2 GB with the default, 2.6 GB with 64 (measured; still growing, for
# reasons beyond this cache). Read at oneDNN's first use, so it is set when crossway is imported; a value the
# user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

# Overrides the CPU check below: "1" treats the CPU as running bf16 natively, "0" as emulating it (tests use it
# to take both paths on any machine).
FORCE_ENV = "CROSSWAY_NATIVE_BF16"
NATIVE_FLAGS = {"x86_64": ("amx_bf16", "avx512_bf16"), "aarch64": ("bf16",)}  # /proc/cpuinfo flags


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


@functools.cache
def _cpu_native_bf16() -> tuple[bool, str]:
    flags, machine = cpu_flags(), platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    wanted = NATIVE_FLAGS.get(machine, ())
    found = [f for f in wanted if f in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    if not flags:
        return False, "the CPU's features are unknown here"
    return False, f"the CPU has no {' or '.join(wanted) or 'bf16 instructions'}"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` runs bf16 matrix products natively, why)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"the GPU {'supports' if ok else 'does not support'} bf16"
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        return forced == "1", f"{FORCE_ENV}={forced}"
    return _cpu_native_bf16()


@dataclass(frozen=True)
class Choice:
    requested: str
    kind: str  # fp32 | bf16 | fp16
    reason: str
    native: bool  # the hardware runs `kind` at full speed


def choose(requested: str, device: torch.device) -> Choice:
    """Resolve train.precision for `device`: `auto` becomes bf16 or fp32; an explicit value is kept."""
    native, why = native_bf16(device)
    if requested == "auto":
        return Choice(requested, "bf16" if native else "fp32", why, True)
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU (train.device=cuda); on CPU use bf16 or auto")
    if requested == "bf16":
        return Choice(requested, "bf16", why, native)
    return Choice(requested, requested, "as configured", True)


class Precision:
    def __init__(self, kind: str, device: torch.device):
        self.choice = choose(kind, device)
        self.kind, self.device = self.choice.kind, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.kind)
        self.scaler = torch.amp.GradScaler(device.type) if self.kind == "fp16" else None

    def describe(self) -> str:
        c = self.choice
        if c.requested == "auto":
            emulated = "" if c.kind == "bf16" or self.device.type != "cpu" else ", so bf16 would be emulated"
            return f"precision: {c.kind} (auto: {c.reason}{emulated})"
        if not c.native:
            return f"precision: {c.kind} (emulated: {c.reason}; LSTMs run in fp32)"
        return f"precision: {c.kind}"

    def prepare(self, model: nn.Module) -> nn.Module:
        """Make `model` trainable under this precision: with bf16 on a CPU that emulates it, warn once and run
        LSTMs in fp32 (oneDNN has no emulated bf16 LSTM)."""
        if self.dtype is torch.bfloat16 and self.device.type == "cpu" and not self.choice.native:
            warnings.warn(f"train.precision=bf16: {self.choice.reason}, so bf16 is emulated and training will be "
                          "much slower than in fp32 (train.precision=auto picks fp32 here)", stacklevel=3)
            for m in model.modules():
                if isinstance(m, nn.LSTM) and not getattr(m, "_crossway_fp32", False):
                    m.forward = _fp32(m.forward)
                    m._crossway_fp32 = True
        return model

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


def _fp32(forward):
    """`forward` run with CPU autocast off and its floating-point tensor inputs (packed sequences and (h, c)
    tuples included) in float32."""
    def cast(x):
        if isinstance(x, Tensor | nn.utils.rnn.PackedSequence) and (x.data if isinstance(
                x, nn.utils.rnn.PackedSequence) else x).is_floating_point():
            return x.float()
        if isinstance(x, tuple):
            return tuple(cast(y) for y in x)
        return x

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return forward(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
    return run
