"""The two sides of a task's data as a checkpoint keeps them (vocab.json: {"src": ..., "tgt": ...}): a TextCodec
for text, ImageFormat for images in, ClassNames for class maps out. Each has `size` (what the model is built
with: vocabulary size, channels, classes) and a JSON round trip; `codec_from_dict` reads any of them back."""

from __future__ import annotations

from dataclasses import dataclass

from crossway.data.tokenizers import TextCodec


@dataclass(frozen=True)
class ImageFormat:
    """Images as a model reads them: `channels` (1 grayscale, 3 RGB), pixels scaled by data.images.to_float."""

    channels: int

    @property
    def size(self) -> int:
        return self.channels

    def to_dict(self) -> dict:
        return {"kind": "image", "channels": self.channels}

    @classmethod
    def from_dict(cls, d: dict) -> ImageFormat:
        return cls(int(d["channels"]))


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


CODECS = {"text": TextCodec.from_dict, "image": ImageFormat.from_dict, "classes": ClassNames.from_dict}


def codec_from_dict(d: dict):
    """A codec from its to_dict() form (text codecs carry no "kind": they predate the others)."""
    kind = d.get("kind", "text")
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r}; valid: {', '.join(CODECS)}")
    return CODECS[kind](d)
