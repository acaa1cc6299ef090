"""Image-to-text data (captioning, text-line OCR): the `data` section of `task: image_to_text`, and the checked
examples in memory: each image read once, resized by the source's ImageFormat and kept as uint8, each reference
encoded by the target's TextCodec.

Every reference of an image is a training example; validation and evaluation score an output against all of its
image's references. A reference over `max_tgt_len` tokens is left out of training and counted (the count is
printed and logged, with the first lines), never cut; an image over `max_width` is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from crossway.data.captions import CaptionExample, read_captions
from crossway.data.codecs import ImageFormat
from crossway.data.text import SkipReport
from crossway.data.tokenizers import TextCodec, Vocab, make_tokenizer
from crossway.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ImageTextDataConfig:
    train: str = ""  # a caption TSV (image path <TAB> caption; one line per reference) or a folder (NAME.png +
    valid: str = ""  # NAME.txt, one reference per line): crossway.data.captions
    test: str = ""
    channels: int = 3  # 1 = grayscale, 3 = RGB
    height: int = 64  # every image is resized to this height ...
    width: int = 64  # ... and width; 0 = keep the aspect ratio (text lines; batches pad on the right)
    max_width: int = 2048  # with width 0: wider images (after resizing) are errors, never squeezed or cut
    tgt_tokenizer: str = "word"  # word (captions) | char (text lines)
    lowercase: bool = False  # lower-case the references (training and scoring alike)
    min_freq: int = 1  # rarer training tokens become <unk>
    max_tgt_len: int = 64  # longer references are left out of training, and counted
    batch_size: int = 32  # images (one reference each) per batch
    vocab: str = ""  # reuse the target vocabulary of this run, checkpoint or vocab.json

    def __post_init__(self):
        for name in ("channels", "height", "max_width", "min_freq", "max_tgt_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if self.width < 0:
            raise ConfigError(f"data.width must be >= 0 (0 = keep the aspect ratio), got {self.width}")
        if self.tgt_tokenizer not in ("word", "char"):
            raise ConfigError(f"data.tgt_tokenizer must be word or char, not {self.tgt_tokenizer!r}")

    def image_format(self) -> ImageFormat:
        return ImageFormat(self.channels, self.height, self.width, self.max_width if not self.width else 0)


@dataclass
class ImageTextSet:
    """One split in memory: images (C, H, W) uint8 at the model's size, their references and encodings."""

    path: str
    examples: list[CaptionExample]
    images: list[Tensor]
    refs: list[list[str]]  # references per image (lower-cased when data.lowercase)
    pairs: list[tuple[int, list[int], str]]  # (image index, target ids, where) for each reference kept


def build_target_codec(d: ImageTextDataConfig, refs: list[list[str]]) -> TextCodec:
    tok = make_tokenizer(d.tgt_tokenizer, False)
    return TextCodec(tok, Vocab.build((tok.tokenize(r) for rs in refs for r in rs), d.min_freq))


def read_image_text(path: str, d: ImageTextDataConfig, fmt: ImageFormat) -> ImageTextSet:
    """Read and check a split and load its images at the model's size; `encode_targets` encodes the references
    once the target codec is known."""
    examples = read_captions(path)
    images = [fmt.load(e.image) for e in examples]
    refs = [[r.lower() if d.lowercase else r for r in e.captions] for e in examples]
    return ImageTextSet(path, examples, images, refs, [])


def encode_targets(data: ImageTextSet, tgt: TextCodec, max_len: int, report: SkipReport) -> None:
    for i, (e, rs) in enumerate(zip(data.examples, data.refs, strict=True)):
        for k, r in enumerate(rs):
            ids = tgt.encode(r)
            where = f"{e.where} (reference {k + 1})"
            if not ids:
                report.skip("no target tokens", where)
            elif len(ids) > max_len:
                report.skip(f"over {max_len} target tokens", where)
            else:
                data.pairs.append((i, ids, where))
                report.kept += 1
