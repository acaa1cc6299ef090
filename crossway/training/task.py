"""The Task protocol: everything the training loop needs to know about a task, and nothing more.

A task reads and checks its data, turns it into batches, computes the loss of a batch and validates a model.
The loop (training/loop.py) owns the rest: optimizer and schedule, precision, accumulation, clipping, the time
budget, validation and early stopping, checkpoints, exact resume, signals, torchrun, logging. It never branches
on the task: text-to-text (tasks/text.py) and segmentation (tasks/segmentation.py) both satisfy this protocol,
and a new task is a new module, not new `if` statements here.

Units: each batch counts `count` units (target tokens for text, images for segmentation). The loss of an update
is the sum of its batches' losses divided by the units of the whole update (all accumulated batches, all
ranks), so gradient accumulation and data parallelism give the gradient of one big batch. Throughput is logged
as `<unit>_per_s`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn


class Codec(Protocol):
    """One side of a task's data as the model sees it: a TextCodec (tokenizer + vocabulary), the image format,
    the class names. Saved in every checkpoint (vocab.json) and rebuilt from it (data/codecs.py)."""

    @property
    def size(self) -> int:
        """The model's input or output size on this side: vocabulary size, image channels, classes."""
        ...

    def to_dict(self) -> dict: ...


class TaskBatch(Protocol):
    lines: list  # where each example came from (file lines, image names): logged with skipped batches
    count: int  # units this batch contributes to the loss normaliser

    def to(self, device: torch.device) -> TaskBatch: ...


class Task(Protocol):
    src: Codec
    tgt: Codec
    unit: str  # what `count` counts: "tgt_tokens", "images"
    metrics: tuple[str, ...]  # what `validate` returns; train.metric must be one of them (crossway.metrics.METRICS)
    default_metric: str  # train.metric when the configuration leaves it empty
    shown: tuple[str, ...]  # validation metrics printed on the console

    def batches(self, epoch: int) -> Iterator[list]:
        """The training batches (lists of examples) of one epoch: a pure function of the data, the seed and
        the epoch, so a resumed run continues the same sequence."""
        ...

    def batches_per_epoch(self) -> int | None:
        """Batches in one epoch (an estimate where data is streamed; None when unknown)."""
        ...

    def fingerprint(self) -> dict:
        """What fixes the order of batches: resuming with a different one would not continue the same run."""
        ...

    def collate(self, examples: list) -> TaskBatch: ...

    def loss(self, model: nn.Module, batch: TaskBatch, step: int) -> tuple[Tensor, Tensor]:
        """(loss to minimise, loss to report), both summed over the batch's units (the loop divides)."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics of `model` (in eval mode; the loop switches back to training)."""
        ...
