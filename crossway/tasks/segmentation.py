"""Image to mask (U-Net, Attention U-Net): image/mask folders in, a class per pixel out.

Training batches are random crops of the training images under joint augmentation (data/images.py), each
example's augmentation seeded from (train.seed, epoch, image), so an epoch is a pure function of the seed and
resume is exact. The loss (train.seg_loss: ce, dice or ce+dice) is per image and the loop averages it over the
images of an update. Validation runs whole validation images (any size: the model pads and crops) and reports
the loss, mean Dice and IoU over the foreground classes, pixel accuracy and boundary F1 (crossway.segmetrics).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossway.config import RunConfig
from crossway.data.codecs import ClassNames, ImageFormat
from crossway.data.images import (
    Sample,
    augment,
    collate_images,
    image_batches,
    read_segmentation_data,
)
from crossway.errors import ConfigError
from crossway.segmetrics import BOUNDARY_TOLERANCE, SegmentationScores
from crossway.training.losses import segmentation_loss


@dataclass
class ImageBatch:
    images: Tensor  # (B, C, H, W) float, normalised by data.images.normalize_image
    masks: Tensor  # (B, H, W) long class ids; IGNORE_INDEX where padded
    lines: list[str]  # image names

    @property
    def count(self) -> int:
        return self.images.size(0)

    def to(self, device: torch.device) -> ImageBatch:
        if device.type == "cpu":
            return self
        return ImageBatch(self.images.to(device), self.masks.to(device), self.lines)


class SegmentationTask:
    """Satisfies training.task.Task for models that map (B, C, H, W) images to (B, K, H, W) class logits."""

    unit = "images"
    metrics = ("loss", "dice", "iou", "pixel_accuracy", "boundary_f1")
    default_metric = "dice"
    shown = ("loss", "dice", "iou", "boundary_f1", "pixel_accuracy")

    def __init__(self, cfg: RunConfig, codecs: tuple | None, log):
        d = cfg.data
        if not d.train or not d.valid:
            raise ConfigError("data.train and data.valid must name folders with images/ and masks/")
        data = read_segmentation_data(d, list(codecs[1].names) if codecs else None)
        self.cfg, self.train, self.valid = cfg, data.train, data.valid
        self.src, self.tgt = ImageFormat(d.channels), ClassNames(tuple(data.classes))
        for split, samples in (("train", data.train), ("valid", data.valid)):
            print(f"data: {getattr(d, split)}: {len(samples)} images", flush=True)
            log("data", path=getattr(d, split), kept=len(samples), skipped={})
        print(f"classes: {len(data.classes)} ({', '.join(data.classes)})", flush=True)

    def batches(self, epoch: int) -> Iterator[list[tuple[Sample, int]]]:
        """Lists of (sample, augmentation seed); the seed is drawn from (seed, epoch, image) alone."""
        seed, bs = self.cfg.train.seed, self.cfg.data.batch_size
        for idx in image_batches(len(self.train), bs, seed, epoch):
            yield [(self.train[i], random.Random(f"augment:{seed}:{epoch}:{i}").getrandbits(63)) for i in idx]

    def batches_per_epoch(self) -> int:
        return -(-len(self.train) // self.cfg.data.batch_size)

    def fingerprint(self) -> dict:
        return {"seed": self.cfg.train.seed, "batch_size": self.cfg.data.batch_size, "train": self.cfg.data.train,
                "train_images": len(self.train)}

    def collate(self, examples: list[tuple[Sample, int]]) -> ImageBatch:
        pairs = [augment(s.image, s.mask, self.cfg.data, torch.Generator().manual_seed(g)) for s, g in examples]
        images, masks = collate_images(pairs)
        return ImageBatch(images, masks, [s.name for s, _ in examples])

    def loss(self, model: nn.Module, b: ImageBatch, step: int) -> tuple[Tensor, Tensor]:
        loss = segmentation_loss(model(b.images), b.masks, self.cfg.train.seg_loss).sum()
        return loss, loss.detach()

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_samples(model, self.valid, self.tgt.size, self.cfg.data.batch_size, self.cfg.train.seg_loss)


def evaluate_samples(model: nn.Module, samples: list[Sample], num_classes: int, batch_size: int,
                     loss_kind: str = "ce+dice") -> dict:
    """Whole images through `model` (images of one size batched together): the loss and the segmentation scores
    (pixels marked IGNORE_INDEX in a mask count for neither)."""
    device = next(model.parameters()).device
    scores = SegmentationScores(num_classes, include_background=False, boundary_tolerance=BOUNDARY_TOLERANCE)
    by_size: dict[tuple, list[Sample]] = {}
    for s in samples:
        by_size.setdefault(tuple(s.image.shape), []).append(s)
    loss, n = 0.0, 0
    for group in by_size.values():
        for i in range(0, len(group), batch_size):
            images, masks = collate_images([(s.image, s.mask) for s in group[i: i + batch_size]])
            images, masks = images.to(device), masks.to(device)
            logits = model(images)
            loss += float(segmentation_loss(logits, masks, loss_kind).sum())
            scores.update(logits.argmax(1), masks)
            n += images.size(0)
    return {"loss": loss / max(1, n), **scores.result()}
