"""Image/mask folders for segmentation: reading and checking them, joint augmentation, batching.

A data folder holds DIR/images/NAME.<png|jpg|jpeg|tif|tiff|bmp>, DIR/masks/NAME.<png|tif|tiff> (same stem) and,
optionally, DIR/classes.txt (one class name per line; line i names class id i; class 0 is background by
convention). A mask holds one class id per pixel: a palette PNG (mode P, the palette indices are the ids) or an
8/16-bit grayscale image whose values are the ids. The value IGNORE_INDEX (255) marks pixels that count for
nothing: losses and metrics must skip them (e.g. `F.cross_entropy(..., ignore_index=IGNORE_INDEX)`); augmentation
pads masks with it.

Masks are never resized except by nearest neighbour inside `augment`, and every problem (a missing or unreadable
file, a size mismatch, a class id beyond the classes, a decompression bomb) is a DataError naming the file.
EXIF orientation is not applied: images are read in their stored pixel grid, as their masks are. Every image,
a file or bytes (the server's requests), is opened by `open_image`: PNG, JPEG, TIFF and BMP only.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from crossway.data.text import read_lines
from crossway.errors import ConfigError, DataError
from crossway.segmetrics import IGNORE_INDEX

# C channels, H height, W width, B batch
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_EXTS = (".png", ".tif", ".tiff")  # lossless only: a JPEG mask would smear class ids at every boundary
MAX_PIXELS = 50_000_000  # larger declared sizes are refused before decoding (decompression bombs)
MAX_PROBLEMS = 20  # problems listed in one DataError; the rest are counted
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")  # 8 bits per channel
MASK_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")  # one value per pixel
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the only decoders Pillow may try (EPS, say, runs Ghostscript)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)  # what PIL raises on bad files
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


@dataclass(frozen=True, kw_only=True)
class SegmentationDataConfig:
    train: str = ""  # a folder with images/ and masks/ (and classes.txt)
    valid: str = ""
    test: str = ""
    classes: str = ""  # class-names file; default DIR/classes.txt of the training folder (else ids seen in masks)
    channels: int = 3  # 1 = grayscale, 3 = RGB (images are converted; an alpha channel is dropped)
    batch_size: int = 8  # images per batch
    crop: int = 128  # training crop (square, random position); 0 = whole images (all the same size then)
    scale: float = 0.0  # random rescale of image and mask by a factor in [1-scale, 1+scale] before the crop (mask
    # nearest); needs crop > 0, as rescaled whole images would differ in size
    flips: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random 90-degree rotations (only 0/180 for non-square images when crop = 0)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), not {self.channels!r}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.crop < 0:
            raise ConfigError(f"data.crop must be >= 0 (0 = whole images), got {self.crop}")
        if not 0.0 <= self.scale < 1.0:
            raise ConfigError(f"data.scale must be in [0, 1), got {self.scale}")
        if self.scale > 0 and self.crop == 0:
            raise ConfigError("data.scale needs data.crop > 0: rescaled whole images differ in size and cannot be "
                              "batched (set data.crop or data.scale=0)")


@dataclass(frozen=True)
class Sample:
    name: str  # the shared file stem
    image: Tensor  # (C, H, W) uint8
    mask: Tensor  # (H, W) uint8 class ids, IGNORE_INDEX = skip
    path: str  # the image file
    mask_path: str


@dataclass(frozen=True)
class SegmentationData:
    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]


def read_classes(path: str | Path) -> list[str]:
    """Class names, one a line (line i is class id i); blank, duplicate or too many names are errors."""
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    names = [s.strip() for s in lines]
    if not names:
        raise DataError(f"{path}: no class names (one a line; line 1 is class 0, the background)")
    for i, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path}:{i}: empty class name")
        if names.index(name) != i - 1:
            raise DataError(f"{path}:{i}: class {name!r} repeats line {names.index(name) + 1}")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: {len(names)} classes, but at most {IGNORE_INDEX} are possible "
                        f"(id {IGNORE_INDEX} is the ignore index)")
    return names


class ImageTooLarge(DataError):
    """An image whose header declares more than the allowed pixels, refused before any pixel is decoded."""

    def __init__(self, message: str, *, limit: int, width: int | None = None, height: int | None = None):
        super().__init__(message)
        self.limit, self.width, self.height = limit, width, height  # the size, when the header could say it


class UnsupportedImageMode(DataError):
    """A readable image whose pixels crossway does not read (16-bit, 32-bit or float; a mask of colours)."""


def open_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, *, decode: bool = True) -> Image.Image:
    """An image file, or an image's bytes, opened: a PNG, JPEG, TIFF or BMP by content (Pillow tries no other
    decoder, whatever the name says: an EPS file named .png never reaches Ghostscript), its declared width x height
    checked against `max_pixels` before any pixel is decoded (ImageTooLarge: a decompression bomb costs a header
    parse), then decoded, unless `decode` is False (the header alone: size, mode, format). Every other problem is
    a DataError naming the file ("image data" for bytes). Use it as `with open_image(...) as im:`."""
    data = isinstance(source, bytes)
    where = "image data: " if data else f"{source}: "
    try:
        nbytes = len(source) if data else Path(source).stat().st_size
    except OSError as e:
        raise DataError(f"{where}cannot read ({e.strerror})") from None
    if nbytes == 0:
        raise DataError(f"{where}empty {'' if data else 'file '}(0 bytes)")
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours (max_pixels) decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if data else source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit, refused by Pillow itself
        raise ImageTooLarge(f"{where}declared size too large to decode safely (the limit is {max_pixels:,} "
                            f"pixels); refused before decoding ({e})", limit=max_pixels) from None
    except _DECODE_ERRORS as e:  # a header Pillow cannot parse is an UnidentifiedImageError
        raise DataError(f"{where}not a readable image: {_unreadable(source, nbytes, e)}") from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"{where}declares {w}x{h} pixels (W x H, {w * h:,} in all), over the limit of "
                                f"{max_pixels:,}; refused before decoding (a decompression bomb?)",
                                limit=max_pixels, width=w, height=h)
        if w == 0 or h == 0:
            raise DataError(f"{where}declares {w}x{h} pixels: an empty image")
        if decode:
            try:
                im.load()
            except _DECODE_ERRORS as e:  # a file's name says its format; bytes say it only in their header
                raise DataError(f"{where}truncated or corrupt {f'{im.format} ' if data else ''}image ({e})") from None
    except BaseException:
        im.close()
        raise
    return im


def _unreadable(source: str | Path | bytes, nbytes: int, e: Exception) -> str:
    """Why Pillow could not read the header, from the format the first bytes announce (if any)."""
    try:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as f:
            head = f.read(8)
    except OSError:  # the file went away or is not ours to read: Pillow's error says which
        return str(e)
    fmt = next((f for magic, f in _MAGIC.items() if head.startswith(magic)), "")
    what = (f"it starts like a {fmt} image, but its header is truncated or corrupt ({nbytes:,} bytes)" if fmt
            else f"not a PNG, JPEG, TIFF or BMP image ({nbytes:,} bytes starting {head!r})")
    return what if isinstance(e, UnidentifiedImageError) else f"{what} ({e})"


def load_image(source: str | Path | bytes, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Tensor:
    """An 8-bit image, a file or its bytes (opened by open_image), as (C, H, W) uint8, converted to grayscale
    (C=1) or RGB (C=3); alpha is dropped."""
    with open_image(source, max_pixels) as im:
        if im.mode not in IMAGE_MODES:
            name = "image data" if isinstance(source, bytes) else source
            raise UnsupportedImageMode(f"{name}: image mode {im.mode} is not supported (16-bit, 32-bit and float "
                                       f"images are not); use 8-bit grayscale, RGB(A) or palette images")
        arr = np.array(im.convert("L" if channels == 1 else "RGB"))  # (H, W) or (H, W, 3)
    arr = arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))  # (C, H, W)
    return torch.from_numpy(arr)


def load_mask(path: str | Path, num_classes: int | None = None, max_pixels: int = MAX_PIXELS,
              classes_source: str = "") -> Tensor:
    """Class ids as (H, W) uint8: the indices of a palette PNG, or the values of a grayscale (8/16-bit) mask.

    Ids must be below `num_classes` (None: below IGNORE_INDEX); IGNORE_INDEX itself is allowed and means "skip".
    `classes_source` names where the class count came from, for the error message.
    """
    with open_image(path, max_pixels) as im:
        if im.mode not in MASK_MODES:
            raise UnsupportedImageMode(f"{path}: mask mode {im.mode} with {len(im.getbands())} channel(s); masks "
                                       f"must be single-channel class ids (8- or 16-bit grayscale) or a palette "
                                       f"PNG (mode P), not colours (map each colour to its class id first)")
        arr = np.array(im)  # P: palette indices; L/1/I/I;16: values
    limit = IGNORE_INDEX if num_classes is None else num_classes
    bad = (arr >= limit) & (arr != IGNORE_INDEX)
    if arr.dtype.kind == "i":  # mode I is signed
        bad |= arr < 0
    if bad.any():
        flat = np.flatnonzero(bad)
        row, col = divmod(int(flat[0]), arr.shape[1])
        where = f"class id {int(arr[row, col])} at (row {row}, col {col})"
        more = f" ({len(flat) - 1} more such pixels)" if len(flat) > 1 else ""
        if num_classes is None:
            raise DataError(f"{path}: {where}{more}, but class ids must be below {IGNORE_INDEX} "
                            f"({IGNORE_INDEX} is the ignore index)")
        source = f" ({classes_source})" if classes_source else ""
        raise DataError(f"{path}: {where}{more}, but there are {num_classes} classes{source}")
    return torch.from_numpy(arr.astype(np.uint8, copy=False))


def _listing(folder: Path, exts: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """stem -> file for the files in `folder` with one of `exts`; other files are problems, hidden ones skipped."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (a segmentation data folder holds images/ and masks/)")
    files, problems = {}, []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in exts:
            problems.append(f"{p}: not a supported file type here ({', '.join(exts)})")
        elif p.stem in files:
            problems.append(f"{p}: same name as {files[p.stem]}; which one is meant?")
        else:
            files[p.stem] = p
    return files, problems


def read_folder(path: str | Path, channels: int = 3, num_classes: int | None = None, *,
                max_pixels: int = MAX_PIXELS, classes_source: str = "") -> list[Sample]:
    """All image/mask pairs of a data folder, sorted by name, checked; every problem found is listed in one DataError.

    num_classes: mask ids must be below it (None: any id below IGNORE_INDEX); classes_source names its origin.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (a segmentation data folder holds images/ and masks/)")
    images, problems = _listing(root / "images", IMAGE_EXTS)
    if not images and not problems:
        raise DataError(f"{root / 'images'}: no images ({', '.join(IMAGE_EXTS)})")
    masks, mask_problems = _listing(root / "masks", MASK_EXTS)
    problems += mask_problems
    samples = []
    for name, image_path in images.items():
        mask_path = masks.get(name)
        if mask_path is None:
            problems.append(f"{image_path}: no mask; expected {root / 'masks' / name}.png (or .tif, .tiff)")
            continue
        try:
            image = load_image(image_path, channels, max_pixels)
            mask = load_mask(mask_path, num_classes, max_pixels, classes_source)
        except DataError as e:
            problems.append(str(e))
            continue
        if image.shape[1:] != mask.shape:
            problems.append(f"{image_path}: image {image.shape[2]}x{image.shape[1]} but mask {mask_path} is "
                            f"{mask.shape[1]}x{mask.shape[0]} (W x H); masks must match their images pixel for "
                            f"pixel (they are never resized)")
            continue
        samples.append(Sample(name, image, mask, str(image_path), str(mask_path)))
    for name in sorted(set(masks) - set(images)):
        problems.append(f"{masks[name]}: a mask without an image; expected {root / 'images' / name}"
                        f"{{{','.join(IMAGE_EXTS)}}}")
    if problems:
        raise DataError(_summary(root, problems))
    return samples


def _summary(root: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    listed = "\n  ".join(problems[:MAX_PROBLEMS])
    rest = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    return f"{root}: {len(problems)} problems:\n  {listed}{rest}"


def read_segmentation_data(cfg: SegmentationDataConfig, classes: list[str] | None = None,
                           max_pixels: int = MAX_PIXELS) -> SegmentationData:
    """The configured splits and their class names.

    The class names come from `classes` (e.g. a checkpoint's), else data.classes, else TRAIN/classes.txt, else
    the ids seen in the training masks (named "0", "1", ...). A classes.txt in the valid or test folder must agree.
    With data.crop = 0 all training images must have the same size.
    """
    source = "the checkpoint"
    if classes is None and cfg.classes:
        classes, source = read_classes(cfg.classes), cfg.classes
    elif classes is None and cfg.train and (Path(cfg.train) / "classes.txt").is_file():
        source = str(Path(cfg.train) / "classes.txt")
        classes = read_classes(source)
    n = len(classes) if classes is not None else None
    train = read_folder(cfg.train, cfg.channels, n, max_pixels=max_pixels, classes_source=source) if cfg.train else []
    if classes is None:
        if not train:
            raise ConfigError("no class names: set data.classes (a file, one name a line) or data.train")
        top = max(_max_id(s.mask) for s in train)
        classes, source = [str(i) for i in range(top + 1)], f"ids seen in {cfg.train}/masks"
    if cfg.crop == 0 and train:
        first = train[0]
        for s in train[1:]:
            if s.image.shape != first.image.shape:
                raise DataError(f"{s.path}: image {s.image.shape[2]}x{s.image.shape[1]} but {first.path} is "
                                f"{first.image.shape[2]}x{first.image.shape[1]} (W x H); with data.crop=0 whole "
                                f"images are batched, so they must share one size (or set data.crop)")
    splits = {}
    for split in ("valid", "test"):
        folder = getattr(cfg, split)
        if folder and (Path(folder) / "classes.txt").is_file():
            own = read_classes(Path(folder) / "classes.txt")
            if own != classes:
                raise DataError(f"{Path(folder) / 'classes.txt'}: classes {own} differ from {classes} ({source})")
        splits[split] = read_folder(folder, cfg.channels, len(classes), max_pixels=max_pixels,
                                    classes_source=source) if folder else []
    return SegmentationData(classes, train, splits["valid"], splits["test"])


def _max_id(mask: Tensor) -> int:
    ids = mask[mask != IGNORE_INDEX]
    return int(ids.max()) if ids.numel() else 0


def augment(image: Tensor, mask: Tensor, cfg: SegmentationDataConfig,
            gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Joint random augmentation of image (C, H, W) uint8 and mask (H, W), deterministic from `gen`.

    In order: rescale by a factor in [1-scale, 1+scale] (image bilinear, mask nearest), horizontal and vertical
    flips, a rotation by k*90 degrees (for a non-square image with crop = 0, only 0 or 180 degrees, to keep its
    size), then a random crop x crop window; an image smaller than the crop is first padded at a random offset,
    the image with 0 and the mask with IGNORE_INDEX.
    """
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    if cfg.scale > 0:
        factor = 1.0 + cfg.scale * (2.0 * _uniform(gen) - 1.0)
        size = (max(1, round(mask.shape[0] * factor)), max(1, round(mask.shape[1] * factor)))
        image, mask = _resize(image, size, factor), _resize_nearest(mask, size)
    if cfg.flips:
        if _uniform(gen) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if _uniform(gen) < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
    if cfg.rot90:
        k = int(torch.randint(4, (1,), generator=gen))
        if cfg.crop == 0 and mask.shape[0] != mask.shape[1]:
            k &= 2  # 0 or 180 degrees: whole images must keep their (H, W) to be batched
        if k:
            image, mask = image.rot90(k, (-2, -1)), mask.rot90(k, (-2, -1))
    if cfg.crop:
        image, mask = _random_crop(image, mask, cfg.crop, gen)
    return image.contiguous(), mask.contiguous()


def _uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


def _resize(image: Tensor, size: tuple[int, int], factor: float) -> Tensor:
    x = image[None].float()  # (1, C, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def _resize_nearest(mask: Tensor, size: tuple[int, int]) -> Tensor:
    # "nearest-exact" samples at pixel centres, as bilinear with align_corners=False does, so both stay aligned
    return F.interpolate(mask[None, None], size=size, mode="nearest-exact")[0, 0]


def _random_crop(image: Tensor, mask: Tensor, crop: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    h, w = mask.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        top, left = int(torch.randint(ph + 1, (1,), generator=gen)), int(torch.randint(pw + 1, (1,), generator=gen))
        pad = (left, pw - left, top, ph - top)
        image, mask = F.pad(image, pad, value=0), F.pad(mask, pad, value=IGNORE_INDEX)
        h, w = mask.shape
    y = int(torch.randint(h - crop + 1, (1,), generator=gen))
    x = int(torch.randint(w - crop + 1, (1,), generator=gen))
    return image[:, y: y + crop, x: x + crop], mask[y: y + crop, x: x + crop]


def normalize_image(image: Tensor) -> Tensor:
    """uint8 image(s) (..., C, H, W) -> float in [-1, 1]: (x / 255 - 0.5) / 0.5 per channel.

    Training, validation and inference all use this one function, so a model sees the same input scale everywhere.
    """
    return image.float().div_(127.5).sub_(1.0)


def collate_images(samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(image (C, H, W) uint8, mask (H, W)) pairs of one size -> images (B, C, H, W) float, masks (B, H, W) long."""
    sizes = {tuple(img.shape) for img, _ in samples}
    if len(sizes) != 1:
        raise ValueError(f"a batch needs images of one size, got {sorted(sizes)} (crop them or use data.crop)")
    images = normalize_image(torch.stack([img for img, _ in samples]))  # (B, C, H, W)
    masks = torch.stack([m for _, m in samples]).long()  # (B, H, W)
    return images, masks


def image_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of the indices 0..n-1 (the last may be smaller), a pure function of (seed, epoch).

    Resuming at (epoch, batch k) replays exactly the batches an uninterrupted run would have seen.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(n))
    random.Random(f"crossway-images:{seed}:{epoch}").shuffle(order)  # str seeds hash the same on every platform
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]
