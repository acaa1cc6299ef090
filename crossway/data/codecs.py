"""The two sides of a task's data as a checkpoint keeps them (vocab.json: {"src": ..., "tgt": ...}): a TextCodec
for text, ImageFormat for images in, AudioFormat (data/audio.py) for audio in, ClassNames for class maps out.
Each has `size` (what the model is built with: vocabulary size, channels, mel bins, classes) and a JSON round
trip; `codec_from_dict` reads any of them back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from crossway.data.audio import AudioFormat
from crossway.data.images import MAX_PIXELS, load_image, normalize_image
from crossway.data.tokenizers import TextCodec
from crossway.errors import DataError
from crossway.models.image_encoder import grid_shape


@dataclass(frozen=True)
class ImageFormat:
    """Images as a model reads them: `channels` (1 grayscale, 3 RGB), pixels scaled by
    data.images.normalize_image. As a sequence model's source (captioning, text lines) it also fixes the size:
    `height` > 0 resizes every image to that height, and to `width` when > 0 (captions), else keeping the aspect
    ratio (text lines; an image wider than `max_width` after resizing is an error naming it, never squeezed or
    cut). Segmentation keeps images as they are (height = width = 0)."""

    channels: int
    height: int = 0
    width: int = 0
    max_width: int = 0  # 0 = no limit

    @property
    def size(self) -> int:
        return self.channels

    def to_dict(self) -> dict:
        sizes = {"height": self.height, "width": self.width, "max_width": self.max_width} if self.height else {}
        return {"kind": "image", "channels": self.channels, **sizes}

    @classmethod
    def from_dict(cls, d: dict) -> ImageFormat:
        return cls(int(d["channels"]), int(d.get("height", 0)), int(d.get("width", 0)), int(d.get("max_width", 0)))

    # --- as a model's source (the interface TextCodec shares; see crossway.inference) ------------------------
    def encode(self, image: str | Path | bytes | Tensor, name: str = "") -> Tensor:
        """An image file, its bytes or a (C, H, W) uint8 tensor -> (C, H', W') float, resized and normalised.
        `name` says where the image came from in errors (default: the path, or "image data")."""
        return normalize_image(self.load(image, name))

    def load(self, image: str | Path | bytes | Tensor, name: str = "") -> Tensor:
        """An image file, its bytes or a (C, H, W) uint8 tensor -> (C, H', W') uint8 at the model's size."""
        x = image if isinstance(image, Tensor) else load_image(image, self.channels, MAX_PIXELS)
        where = name or (str(image) if isinstance(image, (str, Path)) else "image data")
        if x.dim() != 3 or x.size(0) != self.channels:
            raise DataError(f"{where}: expected a ({self.channels}, H, W) image, got shape {tuple(x.shape)}")
        if self.height:
            H, W = x.shape[1:]
            w = self.width or max(1, round(W * self.height / H))
            if self.max_width and w > self.max_width:
                raise DataError(f"{where}: {W}x{H} pixels is {w} pixels wide at height {self.height}, over the "
                                f"limit of {self.max_width} (data.max_width; split the image, or raise the limit)")
            if (H, W) != (self.height, w):
                x = F.interpolate(x[None].float(), size=(self.height, w), mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        return x

    def cost(self, image: Tensor) -> int:
        """Batching cost: 8 x 8 pixel cells."""
        return -(-image.size(1) // 8) * -(-image.size(2) // 8)

    def collate(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(C, H, W) images -> (src (B, C, H, W), padded with 0 at the bottom and right, src_mask (B, H, W))."""
        H, W = max(x.size(1) for x in images), max(x.size(2) for x in images)
        src = images[0].new_zeros(len(images), self.channels, H, W)
        mask = torch.zeros(len(images), H, W, dtype=torch.bool)
        for i, x in enumerate(images):
            src[i, :, :x.size(1), :x.size(2)] = x
            mask[i, :x.size(1), :x.size(2)] = True
        return src, mask

    def unknown(self, image: Tensor) -> int:
        return 0

    def describe(self, image: Tensor) -> list[str]:
        return []

    def attention_view(self, image: Tensor, attention: Tensor) -> Tensor:
        """Attention rows (..., M) over the encoder's grid, column by column -> (..., h, w), the image's cells."""
        h, w = grid_shape(image.size(1), image.size(2), attention.size(-1))
        return attention.unflatten(-1, (w, h)).transpose(-1, -2)


@dataclass(frozen=True)
class ClassNames:
    """The classes of a segmentation model: class id i is names[i] (0 is background by convention)."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"kind": "classes", "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassNames:
        return cls(tuple(str(n) for n in d["names"]))


CODECS = {"text": TextCodec.from_dict, "image": ImageFormat.from_dict, "audio": AudioFormat.from_dict,
          "classes": ClassNames.from_dict}


def codec_from_dict(d: dict):
    """A codec from its to_dict() form (text codecs carry no "kind": they predate the others)."""
    kind = d.get("kind", "text")
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r}; valid: {', '.join(CODECS)}")
    return CODECS[kind](d)
