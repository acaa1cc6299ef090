"""A generated segmentation data set for demos, tests and benchmarks: overlapping shapes on textured backgrounds.

Each image shows several objects of the classes in CLASSES at random positions, sizes, angles and colours, later
ones occluding earlier ones, over a background of smooth noise, stripes or a gradient. Every class draws its colours
from the same range, and backgrounds too, so colour alone never gives the class: the shape does. Thin parts
(1-3 px lines, star points, narrow rings) make fine boundaries. The image is then slightly blurred and gets Gaussian
pixel noise; the mask stays sharp. Masks are palette PNGs (mode P) whose indices are the class ids.

Every image comes from its own generator seeded by (seed, split, index), so the output is a pure function of the
arguments: the same seed gives byte-identical files (for a given Pillow and numpy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("background", "disc", "rectangle", "ring", "line", "star")
# mask palette (viewable masks): black background, distinct colours per class, white for the ignore index 255
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]
SPLITS = ("train", "valid", "test")
OBJECTS = (5, 10)  # objects per image, inclusive
RADIUS = (0.07, 0.25)  # object radius as a fraction of the image size
COLOUR = (20, 235)  # every class and background draws each RGB channel from this range
MIN_CONTRAST = 90  # an object's colour differs from the background's mean by at least this (L1 over RGB)
BLUR = (0.3, 0.8)  # Gaussian blur radius of the image, pixels
NOISE = (2.0, 8.0)  # std of the Gaussian pixel noise, in 0..255 units


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist(), strict=True))


def _disc(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    draw.polygon(_ellipse(cx, cy, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)), fill=255)


def _rectangle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    a, b, angle = r * rng.uniform(0.5, 1.0), r * rng.uniform(0.25, 1.0), rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    corners = [(cx + c * x - s * y, cy + s * x + c * y) for x, y in ((-a, -b), (a, -b), (a, b), (-a, b))]
    draw.polygon(corners, fill=255)


def _ring(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    aspect, angle = rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
    width = rng.uniform(2.0, max(2.5, r / 2.5))
    draw.polygon(_ellipse(cx, cy, r, r * aspect, angle), fill=255)
    draw.polygon(_ellipse(cx, cy, r - width, max(0.5, r * aspect - width), angle), fill=0)  # the hole shows through


def _line(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    width = int(rng.integers(1, 4))  # 1-3 px
    angle, length = rng.uniform(0, math.pi), r * rng.uniform(1.0, 2.0)
    arms = (angle, angle + math.pi / 2) if rng.random() < 0.4 else (angle,)  # a cross or a single line
    for a in arms:
        dx, dy = length * math.cos(a), length * math.sin(a)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)


def _star(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    angle = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.3:  # a triangle
        points = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
                  for k in range(3)]
    else:  # a star with 5-7 thin points
        n, inner = int(rng.integers(5, 8)), r * rng.uniform(0.3, 0.5)
        points = [(cx + rr * math.cos(angle + k * math.pi / n), cy + rr * math.sin(angle + k * math.pi / n))
                  for k, rr in zip(range(2 * n), [r, inner] * n, strict=True)]
    draw.polygon(points, fill=255)


SHAPES = {"disc": _disc, "rectangle": _rectangle, "ring": _ring, "line": _line, "star": _star}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32: smooth noise, stripes or a linear gradient between random colours."""
    kind = int(rng.integers(3))
    if kind == 0:
        g = int(rng.integers(3, 9))
        low = rng.uniform(*COLOUR, size=(g, g, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    c0, c1 = rng.uniform(*COLOUR, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    t = xx * math.cos(angle) + yy * math.sin(angle)  # (size, size) distance along a random direction
    if kind == 1:
        period = rng.uniform(5.0, 24.0)
        w = 0.5 + 0.5 * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    else:
        w = (t - t.min()) / max(1e-6, float(np.ptp(t)))
    return c0 + w[..., None] * (c1 - c0)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        c = rng.uniform(*COLOUR, size=3)
        if np.abs(c - avoid).sum() >= MIN_CONTRAST:
            break
    return tuple(int(v) for v in c)


def make_sample(rng: np.random.Generator, size: int,
                classes: tuple[str, ...] = CLASSES) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, palette mask) pair drawn from `rng`."""
    base = _background(rng, size)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    label = Image.new("P", (size, size), 0)  # palette indices are the class ids
    label.putpalette(_palette(len(classes)))
    mean = base[::4, ::4].reshape(-1, 3).mean(0)  # (3,) the background's mean colour
    n = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    ids = list(range(1, len(classes)))
    order = [int(i) for i in rng.permutation(ids)] + [int(i) for i in rng.choice(ids, size=max(0, n - len(ids)))]
    for cls in order[:n]:  # first a random permutation of the classes, so each image shows most of them
        cx, cy = rng.uniform(0, size, size=2)
        r = size * rng.uniform(*RADIUS)
        # draw on a stencil of the object's box only (2r + 3 covers every shape: lines reach 2r from the centre)
        x0, y0 = max(0, int(cx - 2 * r - 3)), max(0, int(cy - 2 * r - 3))
        x1, y1 = min(size, int(cx + 2 * r + 4)), min(size, int(cy + 2 * r + 4))
        stencil = Image.new("L", (x1 - x0, y1 - y0), 0)
        SHAPES[classes[cls]](ImageDraw.Draw(stencil), rng, cx - x0, cy - y0, r)
        image.paste(_colour(rng, mean), (x0, y0, x1, y1), mask=stencil)  # later objects occlude earlier ones
        label.paste(cls, (x0, y0, x1, y1), mask=stencil)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR)))
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(*NOISE))
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8)), label


def _palette(n: int) -> list[int]:
    colours = [PALETTE[i % len(PALETTE)] for i in range(n)] + [(0, 0, 0)] * (255 - n) + [(255, 255, 255)]
    return [v for c in colours for v in c]


def generate_shapes(out_dir: str | Path, n_train: int = 400, n_valid: int = 50, n_test: int = 50, size: int = 128,
                    seed: int = 0, classes: tuple[str, ...] = CLASSES) -> dict:
    """Write OUT/{train,valid,test}/{images,masks}/NNNNN.png, OUT/<split>/classes.txt and OUT/README.txt.

    `classes` is "background" followed by some of SHAPES' names. A split with 0 images is not written.
    Returns {"classes": [...], "splits": {split: {"dir": path, "images": count}}, "readme": path}.
    """
    if not classes or classes[0] != "background" or any(c not in SHAPES for c in classes[1:]) or len(classes) < 2:
        raise ValueError(f"classes must be 'background' followed by some of {list(SHAPES)}, got {list(classes)}")
    if size < 8 or seed < 0 or min(n_train, n_valid, n_test) < 0:
        raise ValueError(f"need size >= 8, seed >= 0 and counts >= 0; got size={size}, seed={seed}")
    out = Path(out_dir)
    splits = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_valid, n_test), strict=True)):
        if n == 0:
            continue
        folder = out / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        (folder / "classes.txt").write_text("".join(c + "\n" for c in classes), encoding="utf-8")
        for i in range(n):
            image, mask = make_sample(np.random.default_rng([seed, k, i]), size, classes)
            image.save(folder / "images" / f"{i:05d}.png", compress_level=1)  # noisy pixels barely compress
            mask.save(folder / "masks" / f"{i:05d}.png")
        splits[split] = {"dir": str(folder), "images": n}
    readme = out / "README.txt"
    readme.write_text(_readme(splits, size, seed, classes), encoding="utf-8")
    return {"classes": list(classes), "splits": splits, "readme": str(readme)}


def _readme(splits: dict, size: int, seed: int, classes: tuple[str, ...]) -> str:
    counts = ", ".join(f"{s}: {v['images']}" for s, v in splits.items())
    ids = ", ".join(f"{i} {c}" for i, c in enumerate(classes))
    return (f"Generated by crossway.data.shapes.generate_shapes(size={size}, seed={seed}).\n"
            f"Images ({counts}) are {size}x{size} RGB PNGs; masks are palette PNGs whose indices are class ids "
            f"({ids}); each split folder has classes.txt.\n"
            f"Recipe: a background of smooth noise, stripes or a gradient; {OBJECTS[0]}-{OBJECTS[1]} objects at random "
            f"positions, radii {RADIUS[0]}-{RADIUS[1]} of the size, angles and colours (every class and the background "
            f"draw RGB from {COLOUR[0]}-{COLOUR[1]}, so colour does not give the class), later objects occluding "
            f"earlier ones; lines are 1-3 px wide. Then a Gaussian blur of radius {BLUR[0]}-{BLUR[1]} px and Gaussian "
            f"noise of std {NOISE[0]}-{NOISE[1]} on the image only; masks stay sharp.\n"
            f"Each image is drawn from numpy.random.default_rng([seed, split index, image index]).\n")
