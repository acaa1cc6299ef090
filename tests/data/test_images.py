"""Image/mask folders: every bad file is a DataError naming it; augmentation keeps image and mask aligned."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from crossway.data.images import (
    IGNORE_INDEX,
    SegmentationDataConfig,
    augment,
    collate_images,
    image_batches,
    load_image,
    load_mask,
    normalize_image,
    read_classes,
    read_folder,
    read_segmentation_data,
)
from crossway.errors import ConfigError, DataError

CLASSES = ["background", "a", "b", "c"]
W, H = 12, 10


def _palette_mask(ids: np.ndarray) -> Image.Image:
    p = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    p.putpalette([v for i in range(256) for v in (i * 60 % 256, i * 20 % 256, i * 90 % 256)])
    return p


def _ids(seed: int, h: int = H, w: int = W, n: int = len(CLASSES)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(h, w)).astype(np.uint8)


def _rgb(seed: int, h: int = H, w: int = W) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _png_bytes(im: Image.Image, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _declared_png(w: int, h: int) -> bytes:
    """A few-hundred-byte PNG whose header declares w x h RGB pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def good(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    _rgb(1).save(root / "images" / "a.png")
    _palette_mask(_ids(1)).save(root / "masks" / "a.png")
    _rgb(2).save(root / "images" / "b.jpg", quality=95)
    Image.fromarray(_ids(2)).save(root / "masks" / "b.png")  # grayscale ids
    _rgb(3).convert("RGBA").save(root / "images" / "c.tif")
    Image.fromarray(_ids(3)).save(root / "masks" / "c.tiff")
    return root


def _read(root: Path, **kw):
    return read_folder(root, 3, len(CLASSES), classes_source=str(root / "classes.txt"), **kw)


def test_good_folder_reads(good):
    samples = _read(good)
    assert [s.name for s in samples] == ["a", "b", "c"]
    for i, s in enumerate(samples, start=1):
        assert s.image.shape == (3, H, W) and s.image.dtype == torch.uint8
        assert s.mask.shape == (H, W) and s.mask.dtype == torch.uint8
        assert torch.equal(s.mask, torch.from_numpy(_ids(i)))
    assert torch.equal(samples[0].image, torch.from_numpy(np.array(_rgb(1))).permute(2, 0, 1))


# each case: (files to write {relative path: bytes or a callable(path)}, words the message must hold)
BAD = {
    "missing mask": ({"images/nomask.png": lambda: _png_bytes(_rgb(5))},
                     ["images/nomask.png: no mask; expected", "masks/nomask.png"]),
    "mask without image": ({"masks/orphan.png": lambda: _png_bytes(Image.fromarray(_ids(5)))},
                           ["masks/orphan.png: a mask without an image; expected", "images/orphan"]),
    "size mismatch": ({"images/size.png": lambda: _png_bytes(_rgb(6)),
                       "masks/size.png": lambda: _png_bytes(Image.fromarray(_ids(6, w=W - 1)))},
                      ["images/size.png: image 12x10 but mask", "masks/size.png is 11x10 (W x H)"]),
    "class id beyond the classes": (
        {"images/classid.png": lambda: _png_bytes(_rgb(7)),
         "masks/classid.png": lambda: _png_bytes(Image.fromarray(np.where(
             np.arange(H * W).reshape(H, W) == 3 * W + 10, 7, 0).astype(np.uint8)))},
        ["masks/classid.png: class id 7 at (row 3, col 10), but there are 4 classes (", "classes.txt)"]),
    "unreadable image": ({"images/garbage.png": lambda: b"this is not an image\n" * 20,
                          "masks/garbage.png": lambda: _png_bytes(Image.fromarray(_ids(8)))},
                         ["images/garbage.png: not a readable image"]),
    "truncated png": ({"images/trunc.png": lambda: _png_bytes(_rgb(9, 64, 64))[:3000],
                       "masks/trunc.png": lambda: _png_bytes(Image.fromarray(_ids(9, 64, 64)))},
                      ["images/trunc.png: truncated or corrupt image"]),
    "truncated jpeg": ({"images/truncj.jpg": lambda: _png_bytes(_rgb(9, 64, 64), "jpeg")[:2000],
                        "masks/truncj.png": lambda: _png_bytes(Image.fromarray(_ids(9, 64, 64)))},
                       ["images/truncj.jpg: truncated or corrupt image"]),
    "zero-size file": ({"images/empty.png": lambda: b"",
                        "masks/empty.png": lambda: _png_bytes(Image.fromarray(_ids(10)))},
                       ["images/empty.png: empty file (0 bytes)"]),
    "rgb mask": ({"images/rgbmask.png": lambda: _png_bytes(_rgb(11)),
                  "masks/rgbmask.png": lambda: _png_bytes(_rgb(12))},
                 ["masks/rgbmask.png: mask mode RGB", "single-channel class ids", "palette PNG"]),
    "16-bit image": ({"images/deep.png": lambda: _png_bytes(Image.fromarray(_ids(13).astype(np.uint16) * 300)),
                      "masks/deep.png": lambda: _png_bytes(Image.fromarray(_ids(13)))},
                     ["images/deep.png: image mode I;16 is not supported"]),
    "declared-huge image": ({"images/huge.png": lambda: _declared_png(10_000, 10_000),
                             "masks/huge.png": lambda: _png_bytes(Image.fromarray(_ids(14)))},
                            ["images/huge.png: declares 10000x10000 pixels", "refused before decoding"]),
    "decompression bomb": ({"images/bomb.png": lambda: _declared_png(50_000, 50_000),
                            "masks/bomb.png": lambda: _png_bytes(Image.fromarray(_ids(15)))},
                           ["images/bomb.png: declared size too large"]),
    "unknown file type": ({"images/notes.txt": lambda: b"hello"}, ["images/notes.txt: not a supported file type"]),
}


def _write(root: Path, files: dict) -> list[Path]:
    paths = []
    for rel, make in files.items():
        (root / rel).write_bytes(make())
        paths.append(root / rel)
    return paths


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_case_names_its_file(good, case):
    files, words = BAD[case]
    written = _write(good, files)
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        _read(good)
    assert time.perf_counter() - start < 2.0  # nothing huge was decoded
    msg = str(e.value)
    assert "problems" not in msg  # one problem, said on its own
    for w in words:
        assert w in msg, (w, msg)
    for p in written:  # the good folder minus the bad files reads fine
        p.unlink()
    assert len(_read(good)) == 3


def test_all_bad_cases_at_once_are_listed(good):
    for files, _ in BAD.values():
        _write(good, files)
    with pytest.raises(DataError) as e:
        _read(good)
    msg = str(e.value)
    assert f"{len(BAD)} problems" in msg
    for _, words in BAD.values():
        assert all(w in msg for w in words)


def test_missing_or_empty_folders(tmp_path, good):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        read_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/images: no images \(.png, .jpg"):
        read_folder(tmp_path / "empty")
    for p in (good / "masks").iterdir():
        p.unlink()
    (good / "masks").rmdir()
    with pytest.raises(DataError, match="masks: no such folder"):
        read_folder(good)


def test_max_pixels_parameter(good):
    with pytest.raises(DataError, match=r"declares 12x10 pixels .* over the limit of 100"):
        _read(good, max_pixels=100)


def test_palette_grayscale_and_16bit_masks_read_the_same_ids(tmp_path):
    ids = _ids(20)
    ids[0, 0] = IGNORE_INDEX  # the ignore index is allowed in any mask
    files = {"p.png": _palette_mask(ids), "l.png": Image.fromarray(ids), "l.tif": Image.fromarray(ids),
             "i16.png": Image.fromarray(ids.astype(np.uint16)), "i16.tif": Image.fromarray(ids.astype(np.uint16))}
    for name, im in files.items():
        im.save(tmp_path / name)
        got = load_mask(tmp_path / name, len(CLASSES))
        assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(ids)), name
    with Image.open(tmp_path / "p.png") as p, Image.open(tmp_path / "i16.png") as i16:
        assert p.mode == "P" and i16.mode == "I;16"


def test_mask_ids_above_255_and_without_class_count(tmp_path):
    ids = _ids(21).astype(np.uint16)
    ids[2, 5] = 300
    Image.fromarray(ids).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png: class id 300 at \(row 2, col 5\), but class ids must be below 255"):
        load_mask(tmp_path / "m.png")


def test_load_image_channels_and_alpha(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "x.png")
    assert torch.equal(load_image(tmp_path / "x.png", 3), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    gray = load_image(tmp_path / "x.png", 1)
    assert gray.shape == (1, H, W) and gray.dtype == torch.uint8
    _palette_mask(_ids(0)).save(tmp_path / "p.png")  # a palette image becomes RGB
    assert load_image(tmp_path / "p.png", 3).shape == (3, H, W)


def test_read_classes(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("background\r\ncat\n\n")
    assert read_classes(f) == ["background", "cat"]
    f.write_text("background\n\ncat\n")
    with pytest.raises(DataError, match="classes.txt:2: empty class name"):
        read_classes(f)
    f.write_text("background\ncat\ncat\n")
    with pytest.raises(DataError, match="classes.txt:3: class 'cat' repeats line 2"):
        read_classes(f)
    f.write_text("")
    with pytest.raises(DataError, match="no class names"):
        read_classes(f)


def test_config_validation():
    assert SegmentationDataConfig().crop == 128
    for kw, key in [({"channels": 2}, "data.channels"), ({"batch_size": 0}, "data.batch_size"),
                    ({"crop": -1}, "data.crop"), ({"scale": 1.0}, "data.scale"), ({"scale": -0.1}, "data.scale"),
                    ({"scale": 0.2, "crop": 0}, "data.scale needs data.crop")]:
        with pytest.raises(ConfigError, match=key):
            SegmentationDataConfig(**kw)


def test_read_segmentation_data(good, tmp_path):
    data = read_segmentation_data(SegmentationDataConfig(train=str(good), valid=str(good), crop=0))
    assert data.classes == CLASSES and len(data.train) == 3 and len(data.valid) == 3 and data.test == []
    (good / "classes.txt").unlink()  # classes then come from the ids seen in the training masks
    assert read_segmentation_data(SegmentationDataConfig(train=str(good))).classes == ["0", "1", "2", "3"]
    other = tmp_path / "other.txt"
    other.write_text("bg\nx\n")
    with pytest.raises(DataError, match=r"class id [23] .* but there are 2 classes \(.*other.txt\)"):
        read_segmentation_data(SegmentationDataConfig(train=str(good), classes=str(other)))
    other.write_text("bg\nx\ny\nz\n")
    (good / "classes.txt").write_text("\n".join(CLASSES))
    with pytest.raises(DataError, match=r"data/classes.txt: classes \['background', .* differ from \['bg'"):
        read_segmentation_data(SegmentationDataConfig(train=str(good), valid=str(good), classes=str(other)))
    _rgb(4, H + 1, W).save(good / "images" / "d.png")
    Image.fromarray(_ids(4, H + 1, W)).save(good / "masks" / "d.png")
    with pytest.raises(DataError, match="d.png: image 12x11 but .* with data.crop=0"):
        read_segmentation_data(SegmentationDataConfig(train=str(good), crop=0))


def _coded_pair(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mask with ids 1..5 and an image whose channel 0 is 40 * id (0 only where padded)."""
    mask = torch.from_numpy(np.random.default_rng(seed).integers(1, 6, size=(h, w)).astype(np.uint8))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([mask * 40, rows.to(torch.uint8), cols.to(torch.uint8)])  # (3, H, W)
    return image, mask


@pytest.mark.parametrize("crop", [0, 24, 48])
def test_augment_keeps_image_and_mask_aligned(crop):
    image, mask = _coded_pair(37, 53, seed=crop)
    cfg = SegmentationDataConfig(crop=crop)
    gen = torch.Generator().manual_seed(0)
    padded = 0
    for _ in range(200):
        img, m = augment(image, mask, cfg, gen)
        assert img.shape[1:] == m.shape and img.dtype == torch.uint8 and m.dtype == torch.uint8
        assert m.shape == ((crop, crop) if crop else (37, 53))  # rot90 by 90/270 skipped for whole images
        pad = m == IGNORE_INDEX
        padded += int(pad.sum())
        assert torch.equal(pad, img[0] == 0)
        assert torch.equal(img[0][~pad], m[~pad] * 40)
    assert (padded > 0) == (crop == 48)  # 37 < 48: the short side is padded with IGNORE_INDEX


def test_augment_with_scale_keeps_alignment():
    """Rescaling blends the image at boundaries, so compare where the object is: its centroid in the image and in
    the mask agree within quantisation (~0.5 px; a 1-px shift of the mask gives 1.4 px here)."""
    mask = torch.ones(64, 64, dtype=torch.uint8)
    mask[20:40, 10:42] = 5
    image = torch.stack([mask * 40] * 3)  # (3, 64, 64)
    cfg = SegmentationDataConfig(crop=48, scale=0.5)
    gen = torch.Generator().manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    worst, padded = 0.0, 0
    for _ in range(100):
        img, m = augment(image, mask, cfg, gen)
        valid = m != IGNORE_INDEX
        padded += int((~valid).any())
        mf = m.float()[None, None]  # pixels whose 5x5 neighbourhood holds one id match exactly
        uniform = (F.max_pool2d(mf, 5, 1) == -F.max_pool2d(-mf, 5, 1))[0, 0]  # (44, 44): not at the crop's edge,
        inner = (m[2:-2, 2:-2] != IGNORE_INDEX) & uniform  # where the image blended pixels cut off by the crop
        assert torch.equal(img[0, 2:-2, 2:-2][inner], m[2:-2, 2:-2][inner] * 40)
        obj = (m == 5).float()
        if obj.sum() < 50:
            continue
        w = ((img[0].float() - 40) / 160).clamp(0, 1) * valid  # how much of each pixel is object in the image
        for axis in (rows, cols):
            worst = max(worst, abs(float((obj * axis).sum() / obj.sum() - (w * axis).sum() / w.sum())))
    assert worst < 0.75
    assert padded > 0  # factors below 0.75 shrink 64 px under the 48-px crop: padded with IGNORE_INDEX


def test_augment_is_deterministic_from_the_generator():
    image, mask = _coded_pair(40, 40, seed=1)
    cfg = SegmentationDataConfig(crop=32, scale=0.3)
    a = [augment(image, mask, cfg, torch.Generator().manual_seed(5)) for _ in range(2)]
    b = augment(image, mask, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][1], a[1][1])
    assert not torch.equal(a[0][0], b[0])
    off = SegmentationDataConfig(crop=0, flips=False, rot90=False)
    img, m = augment(image, mask, off, torch.Generator().manual_seed(5))
    assert torch.equal(img, image) and torch.equal(m, mask)


def test_collate_and_normalize():
    pairs = [_coded_pair(8, 6, seed=i) for i in range(3)]
    images, masks = collate_images(pairs)
    assert images.shape == (3, 3, 8, 6) and images.dtype == torch.float32
    assert masks.shape == (3, 8, 6) and masks.dtype == torch.long
    assert torch.equal(images, normalize_image(torch.stack([p[0] for p in pairs])))
    x = normalize_image(torch.tensor([0, 255, 51], dtype=torch.uint8))
    assert torch.allclose(x, torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    with pytest.raises(ValueError, match="one size"):
        collate_images([_coded_pair(8, 6, 0), _coded_pair(6, 8, 0)])


def test_image_batches_are_a_pure_function_of_seed_and_epoch():
    a = image_batches(23, 5, seed=3, epoch=2)
    assert a == image_batches(23, 5, seed=3, epoch=2)
    assert [len(b) for b in a] == [5, 5, 5, 5, 3]
    assert sorted(i for b in a for i in b) == list(range(23))
    assert a != image_batches(23, 5, seed=3, epoch=3) and a != image_batches(23, 5, seed=4, epoch=2)
    assert image_batches(0, 5, 0, 0) == []
    with pytest.raises(ValueError):
        image_batches(3, 0, 0, 0)
