"""Segmentation inference: whole images or overlapping tiles blended into one class map, in bounded memory;
mask and overlay PNGs; evaluation of a run on an image/mask folder.

C channels, K classes, H W image height and width, T tile size.

Tiling: an image larger than `tile` on either side is cut into T x T windows whose starts step by T - overlap
(the last window ends at the image edge). Each window's class probabilities are weighted by a ramp that falls
towards the window's edges inside the overlap (a pixel near a window edge saw less context) and summed; rows
above the current band of windows are final, are turned into classes and leave the buffer, so memory holds
K x T x W probabilities, never K x H x W.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossway.data.images import load_image, normalize_image, read_folder
from crossway.errors import ConfigError
from crossway.segmetrics import BOUNDARY_TOLERANCE, SegmentationScores
from crossway.training.checkpoint import LoadedModel

PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


@dataclass(frozen=True, kw_only=True)
class TileConfig:
    tile: int = 0  # window size T; 0 = whole images (fastest, memory grows with the image)
    overlap: int = 32  # pixels two neighbouring windows share (< tile)

    def __post_init__(self):
        if self.tile < 0 or self.overlap < 0 or (self.tile and self.overlap >= self.tile):
            raise ConfigError(f"tiling needs tile >= 0 and 0 <= overlap < tile, got tile={self.tile} "
                              f"overlap={self.overlap}")


@torch.no_grad()
def segment_image(model: nn.Module, image: Tensor, tiles: TileConfig = TileConfig()) -> Tensor:
    """image (C, H, W) uint8 -> class map (H, W) long, exactly the input's size."""
    model.eval()
    C, H, W = image.shape
    if not tiles.tile or (H <= tiles.tile and W <= tiles.tile):
        return _logits(model, image).argmax(0)
    return _tiled(model, image, tiles.tile, tiles.overlap)


def _logits(model: nn.Module, image: Tensor) -> Tensor:
    """(C, H, W) uint8 -> (K, H, W) float32 logits."""
    device = next(model.parameters()).device
    return model(normalize_image(image[None].to(device)))[0].float().cpu()


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """Window starts covering 0..n-1: every stride, and one more that ends at n."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, stride))
    return starts if starts[-1] == n - tile else [*starts, n - tile]


def _ramp(n: int, overlap: int) -> Tensor:
    """(n,) weights: 1 inside, falling linearly to 1 / (overlap + 1) at both ends across `overlap` pixels."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.minimum(torch.ones(n), torch.minimum(i + 1, n - i) / (overlap + 1))


def _tiled(model: nn.Module, image: Tensor, tile: int, overlap: int) -> Tensor:
    C, H, W = image.shape
    stride = tile - overlap
    ys, xs = _starts(H, tile, stride), _starts(W, tile, stride)
    out = torch.empty(H, W, dtype=torch.long)
    acc: Tensor | None = None  # (K, rows, W) weighted probabilities of rows base .. base + rows - 1
    weight = torch.zeros(0, W)  # (rows, W)
    base = 0
    for y in ys:
        h = min(tile, H - y)
        if acc is not None and y > base:  # rows above this band are final
            out[base:y] = (acc[:, : y - base] / weight[: y - base]).argmax(0)
            acc, weight = acc[:, y - base:], weight[y - base:]
            base = y
        need = y + h - base
        for x in xs:
            w = min(tile, W - x)
            probs = F.softmax(_logits(model, image[:, y: y + h, x: x + w]), 0)  # (K, h, w)
            ramp = _ramp(h, overlap)[:, None] * _ramp(w, overlap)[None, :]  # (h, w)
            if acc is None:
                acc, weight = torch.zeros(probs.size(0), 0, W), torch.zeros(0, W)
            if acc.size(1) < need:  # grow the buffer downwards
                grow = need - acc.size(1)
                acc = torch.cat([acc, torch.zeros(acc.size(0), grow, W)], 1)
                weight = torch.cat([weight, torch.zeros(grow, W)], 0)
            acc[:, y - base: y - base + h, x: x + w] += probs * ramp
            weight[y - base: y - base + h, x: x + w] += ramp
    out[base:] = (acc / weight).argmax(0)
    return out


def gate_maps(model: nn.Module, image: Tensor) -> list[Tensor]:
    """The attention gates of an Attention U-Net for a whole image, fine to coarse, each upsampled to (H, W)
    (bilinear) with values in [0, 1]; [] for a model without gates."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        _, alphas = model(normalize_image(image[None].to(device)), gates=True)
    H, W = image.shape[1:]
    return [F.interpolate(a.float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0].cpu() for a in alphas]


def mask_png(mask: Tensor, path_or_file: str | Path | BinaryIO, *, compress_level: int = -1) -> None:
    """Save a class map (H, W) as a palette PNG, to a path or a binary file object: the pixel values are the class
    ids, the palette shows them. `compress_level`: zlib's, 0-9 (-1: its default, 6; the server writes 1, faster)."""
    from PIL import Image

    im = Image.fromarray(mask.to(torch.uint8).numpy())  # mode L; with a palette it becomes P, the values stay
    im.putpalette([v for i in range(256) for v in PALETTE[i % len(PALETTE)]])
    im.save(path_or_file, format="PNG", compress_level=compress_level)


def overlay(image: Tensor, mask: Tensor, alpha: float = 0.5) -> np.ndarray:
    """The image (C, H, W) uint8 with each non-background class tinted in its palette colour -> (H, W, 3) uint8."""
    rgb = image.expand(3, -1, -1) if image.size(0) == 1 else image
    rgb = rgb.permute(1, 2, 0).float().numpy()
    colours = np.array([PALETTE[i % len(PALETTE)] for i in range(int(mask.max()) + 1)], dtype=np.float32)
    tint = colours[mask.numpy()]  # (H, W, 3)
    fg = (mask.numpy() > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * tint, rgb).round().astype(np.uint8)


def segment_files(loaded: LoadedModel, paths: list[str | Path], out_dir: str | Path,
                  tiles: TileConfig = TileConfig()) -> list[dict]:
    """Segment image files: OUT/NAME.png (class ids, palette) and OUT/NAME.overlay.png for each; returns one
    record per image (path, size, seconds, pixels per class)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for p in paths:
        image = load_image(p, loaded.src.channels)
        t0 = time.perf_counter()
        mask = segment_image(loaded.model, image, tiles)
        seconds = time.perf_counter() - t0
        stem = Path(p).stem
        mask_png(mask, out / f"{stem}.png")
        Image.fromarray(overlay(image, mask)).save(out / f"{stem}.overlay.png")
        counts = torch.bincount(mask.flatten(), minlength=loaded.tgt.size).tolist()
        records.append({"image": str(p), "mask": str(out / f"{stem}.png"), "width": image.shape[2],
                        "height": image.shape[1], "seconds": round(seconds, 4),
                        "pixels": dict(zip(loaded.tgt.names, counts, strict=False))})
    return records


def evaluate_folder(loaded: LoadedModel, folder: str | Path, tiles: TileConfig = TileConfig(),
                    report: str | Path | None = None) -> dict:
    """Segment every image of an image/mask folder and score it against the masks: mean Dice and IoU over the
    foreground classes, per class (by name), pixel accuracy and boundary F1. Pixels marked IGNORE_INDEX in a
    mask are not scored. With `report`, the JSON report is also written there."""
    samples = read_folder(folder, loaded.src.channels, loaded.tgt.size)
    scores = SegmentationScores(loaded.tgt.size, include_background=False, boundary_tolerance=BOUNDARY_TOLERANCE)
    t0 = time.perf_counter()
    for s in samples:
        pred = segment_image(loaded.model, s.image, tiles)
        scores.update(pred[None], s.mask.long()[None])
    seconds = time.perf_counter() - t0
    r = scores.result()
    names = loaded.tgt.names
    result = {"data": str(folder), "model": str(loaded.path), "images": r["images"], "dice": r["dice"],
              "iou": r["iou"], "boundary_f1": r["boundary_f1"], "pixel_accuracy": r["pixel_accuracy"],
              "per_class": {n: {"dice": d, "iou": i, "boundary_f1": b} for n, d, i, b in
                            zip(names, r["dice_per_class"], r["iou_per_class"], r["boundary_f1_per_class"],
                                strict=True)},
              "boundary_tolerance_px": BOUNDARY_TOLERANCE, "tile": tiles.tile, "overlap": tiles.overlap,
              "images_per_s": round(len(samples) / max(seconds, 1e-9), 2)}
    if report is not None:
        Path(report).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result
