"""Segmentation metrics: Dice, IoU, pixel accuracy and boundary F1 over label maps, pure torch, with a streaming
accumulator (`SegmentationScores`) that keeps only per-class sums and counts, so validation over any number of
batches runs in bounded memory.

B batch, H W height and width, K classes (class 0 is the background).

Per image and class, with P the predicted and T the true pixels of the class: Dice = 2|P∩T| / (|P| + |T|),
IoU = |P∩T| / |P∪T|. A class's score is the mean over the images where it is counted; the summary "dice" and
"iou" are the mean of those per-class scores over the counted classes (the background only with
include_background=True).

Empty masks, never NaN:
- a class absent from both prediction and truth in an image: that (image, class) pair is left out of the
  class's mean (nothing to find, nothing found: neither a success nor a failure);
- a class left out in every image of the whole set scores 1.0;
- a class absent from the truth but predicted scores 0 for that image: false positives count. MONAI's DiceMetric
  (ignore_empty=True, its default) instead ignores every image whose truth is empty for a class, so it never
  penalises predicting a class that is not there; the two agree when every class is in every truth mask.

Boundary F1 (the BF score of Csurka et al. 2013): the boundary of a binary mask is its pixels with at least one
4-neighbour inside the image that is outside the mask. The image border is not a boundary: an object cut by the
frame has no contour there, and counting the frame would reward any prediction touching the same border.
Precision is the fraction of predicted boundary pixels within `boundary_tolerance` pixels (chessboard distance)
of a true boundary pixel, recall the converse, BF = 2PR / (P + R). An (image, class) pair is counted, or left
out, exactly as for Dice; a counted pair with an empty boundary on one side only scores 0 (this includes a mask
that is empty on one side, and a full-image mask against a partial one); both boundaries empty with both masks
non-empty means both masks fill the image, and scores 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255  # a truth pixel with this value is not scored (data.images pads crops with it)
BOUNDARY_TOLERANCE = 2  # pixels: validation, evaluation and serving count a boundary pixel found within this distance


def class_counts(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """pred, target (B, H, W) long -> |P∩T|, |P|, |T| per image and class, each (B, K) long."""
    B, K = pred.size(0), num_classes
    offset = torch.arange(B, device=pred.device).view(B, 1, 1) * K  # row b counts into bins b*K .. b*K + K-1
    p, t = (pred + offset).flatten(), (target + offset).flatten()
    count = lambda idx: torch.bincount(idx, minlength=B * K).view(B, K)  # noqa: E731
    return count(t[p == t]), count(p), count(t)


def dice_iou(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """pred, target (B, H, W) long -> dice (B, K), iou (B, K) float, counted (B, K) bool.

    counted is False where the class is in neither prediction nor truth; dice and iou are 1.0 there (and never
    NaN), and SegmentationScores leaves those pairs out of its means."""
    _check(pred, target, num_classes)
    inter, p, t = (c.double() for c in class_counts(pred, target, num_classes))
    counted = (p + t) > 0
    dice = torch.where(counted, 2 * inter / (p + t).clamp_min(1), 1.0)
    iou = torch.where(counted, inter / (p + t - inter).clamp_min(1), 1.0)
    return dice, iou, counted


def boundary(mask: Tensor) -> Tensor:
    """mask (N, H, W) bool -> (N, H, W) bool: mask pixels with a 4-neighbour inside the image outside the mask.

    Outside the image counts as inside the mask (pad with 1), so the image border is not a boundary."""
    m = F.pad(mask.float().unsqueeze(1), (1, 1, 1, 1), value=1.0)[:, 0]  # (N, H+2, W+2)
    inner = m[:, :-2, 1:-1] * m[:, 2:, 1:-1] * m[:, 1:-1, :-2] * m[:, 1:-1, 2:]  # all 4 neighbours in the mask
    return mask & (inner == 0)


def near(edges: Tensor, tolerance: int) -> Tensor:
    """edges (N, H, W) bool -> pixels within `tolerance` (chessboard distance) of an edge pixel, by dilation."""
    if tolerance == 0:
        return edges
    x = edges.float().unsqueeze(1)  # (N, 1, H, W)
    return F.max_pool2d(x, 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0


def boundary_f1(pred: Tensor, target: Tensor, num_classes: int, tolerance: int = 2) -> tuple[Tensor, Tensor]:
    """pred, target (B, H, W) long -> BF score (B, K) float, counted (B, K) bool (see the module docstring)."""
    _check(pred, target, num_classes)
    B, K = pred.size(0), num_classes
    score = torch.ones(B, K, dtype=torch.float64, device=pred.device)
    counted = torch.zeros(B, K, dtype=torch.bool, device=pred.device)
    for k in range(K):  # one class at a time: a few (B, H, W) maps, not (B, K, H, W)
        pm, tm = pred == k, target == k
        p_any, t_any = pm.flatten(1).any(1), tm.flatten(1).any(1)  # (B,)
        pb, tb = boundary(pm), boundary(tm)
        n_p, n_t = pb.flatten(1).sum(1).double(), tb.flatten(1).sum(1).double()  # (B,)
        hit_p = (pb & near(tb, tolerance)).flatten(1).sum(1).double()  # predicted edge pixels near a true edge
        hit_t = (tb & near(pb, tolerance)).flatten(1).sum(1).double()
        precision, recall = hit_p / n_p.clamp_min(1), hit_t / n_t.clamp_min(1)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        both_empty = (n_p == 0) & (n_t == 0)
        f1 = torch.where(both_empty, (p_any & t_any).double(), f1)  # both full images -> 1; one mask empty -> 0
        score[:, k], counted[:, k] = torch.where(p_any | t_any, f1, 1.0), p_any | t_any
    return score, counted


class SegmentationScores:
    """Streaming Dice, IoU, pixel accuracy and boundary F1: `update` per batch, `result` at the end."""

    def __init__(self, num_classes: int, include_background: bool = False, boundary_tolerance: int = 2,
                 ignore_index: int = IGNORE_INDEX):
        if num_classes < (1 if include_background else 2):
            raise ValueError(f"num_classes must be >= {1 if include_background else 2} "
                             f"(include_background={include_background}), got {num_classes}")
        if boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0, got {boundary_tolerance}")
        self.num_classes, self.include_background, self.tolerance = num_classes, include_background, boundary_tolerance
        # per class: sums of per-image scores and the number of images counted (float64 on the CPU)
        self.sums = {name: torch.zeros(num_classes, dtype=torch.float64) for name in ("dice", "iou", "boundary_f1")}
        self.counts = {name: torch.zeros(num_classes, dtype=torch.float64) for name in ("overlap", "boundary_f1")}
        self.correct, self.pixels, self.images = 0, 0, 0
        self.ignore_index = ignore_index

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target (B, H, W) long class indices (argmax of the logits, and the truth). Pixels whose truth is
        `ignore_index` (padding, unlabelled) are scored for no class: there both maps get an extra void class,
        which is dropped from the results."""
        K = self.num_classes
        valid = target != self.ignore_index
        _check(pred, torch.where(valid, target, 0), K)
        if not bool(valid.all()):
            pred, target = torch.where(valid, pred, K), torch.where(valid, target, K)
        dice, iou, counted = (x[:, :K] for x in dice_iou(pred, target, K + 1))
        bf, bf_counted = (x[:, :K] for x in boundary_f1(pred, target, K + 1, self.tolerance))
        self.sums["dice"] += (dice * counted).sum(0).cpu()
        self.sums["iou"] += (iou * counted).sum(0).cpu()
        self.counts["overlap"] += counted.sum(0).cpu()  # Dice and IoU count the same pairs
        self.sums["boundary_f1"] += (bf * bf_counted).sum(0).cpu()
        self.counts["boundary_f1"] += bf_counted.sum(0).cpu()
        self.correct += int(((pred == target) & valid).sum())
        self.pixels += int(valid.sum())
        self.images += target.size(0)

    def result(self) -> dict:
        """{"dice", "iou", "boundary_f1": means over the counted classes; "dice_per_class", "iou_per_class",
        "boundary_f1_per_class": one value per class, background included; "pixel_accuracy"; "images"}.
        Before any update every score is 1.0 (nothing to find, nothing found) and "images" is 0."""
        out = {}
        for name, counts in (("dice", "overlap"), ("iou", "overlap"), ("boundary_f1", "boundary_f1")):
            n = self.counts[counts]
            per_class = torch.where(n > 0, self.sums[name] / n.clamp_min(1), 1.0)  # never seen: 1.0
            first = 0 if self.include_background else 1
            out[name] = float(per_class[first:].mean())
            out[f"{name}_per_class"] = per_class.tolist()
        out["pixel_accuracy"] = self.correct / self.pixels if self.pixels else 1.0
        out["images"] = self.images
        return out


def _check(pred: Tensor, target: Tensor, num_classes: int) -> None:
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}")
    for name, x in (("pred", pred), ("target", target)):
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"{name} values must be in [0, {num_classes}), got [{int(x.min())}, {int(x.max())}]")
