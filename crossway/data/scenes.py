"""A generated captioning data set that measures composition: one or two coloured shapes and where they are.

Each size x size RGB image shows one or two shapes on a plain light background with slight pixel noise. A shape
has a colour (COLOURS), a form (SHAPES) and a size (SIZES: small or large). With two shapes, one is clearly left of,
right of, above or below the other: their boxes are apart along that axis by a gap, and their offset across it is
at most a third of their distance along it. Each image has 3-5 differently worded captions (ONE_TEMPLATES,
TWO_TEMPLATES), lowercase words separated by single spaces without punctuation, so whitespace tokenisation works.
Every caption names every shape with all its attributes.

Held-out combinations: the (colour, shape) pairs in HELD_OUT never appear in a train or valid image, and every test
image shows at least one of them (its other attributes, and the other shape, are random). Test scores therefore
measure whether a model composes a colour and a shape it has only seen apart.

Files: OUT/images/{split}_{i:05d}.png, OUT/{train,valid,test}.tsv (`images/NAME.png<TAB>caption`, one line a
caption; crossway.data.captions.read_captions reads them) and OUT/README.md with the recipe. Every image comes from
its own generator seeded by (seed, split, index), so the output is a pure function of the arguments: the same seed
gives byte-identical files (for a given Pillow and numpy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "valid", "test")
COLOURS = {"red": (215, 35, 35), "green": (35, 150, 50), "blue": (35, 75, 215), "yellow": (230, 195, 20),
           "purple": (135, 45, 170), "orange": (240, 125, 20)}  # far apart: every pair differs by >= 90 (L1)
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = {"small": (0.09, 0.11), "large": (0.18, 0.21)}  # radius as a fraction of the image side
HELD_OUT = (("red", "square"), ("green", "triangle"), ("blue", "circle"), ("yellow", "star"),
            ("purple", "diamond"), ("orange", "triangle"))  # every colour once, every shape at least once
TWO_SHAPES = 0.6  # the share of images with two shapes
CAPTIONS = (3, 5)  # captions per image, inclusive
BACKGROUND = (225, 250)  # each RGB channel of the plain background
NOISE = 3.0  # std of the Gaussian pixel noise, 0..255 units
MARGIN = 1.0  # px between a shape's box and the image border
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then averaged down: smooth edges, pure interiors
MIN_SIZE = 32  # two large shapes side by side need 0.84 x size + gap + margins
ONE_TEMPLATES = ("a {s} {c} {sh}", "there is a {s} {c} {sh}", "a picture of a {s} {c} {sh}",
                 "{art} {c} {sh} that is {s}", "a {s} {c} {sh} on a plain background")
TWO_TEMPLATES = ("a {a} {rel} a {b}", "there is a {a} {rel} a {b}", "a {a} is {rel} a {b}",
                 "the {a} is {rel} the {b}", "a picture of a {a} {rel} a {b}")
RELATIONS = {"left": ("to the left of", "left of"), "right": ("to the right of", "right of"), "above": ("above",),
             "below": ("below",)}  # "A <phrase> B" for A left of / right of / above / below B
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}

Shape = tuple[str, str, str]  # (size, colour, shape)


def _describe(shape: Shape) -> str:
    return " ".join(shape)  # "small red circle"


def _pick_shape(rng: np.random.Generator, held_out: bool | None) -> Shape:
    """A random shape; held_out True: its (colour, shape) is in HELD_OUT, False: it is not, None: either."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if held_out is not None:
        pairs = [p for p in pairs if (p in HELD_OUT) == held_out]
    colour, form = pairs[int(rng.integers(len(pairs)))]
    return (("small", "large")[int(rng.integers(2))], colour, form)


def _radius(rng: np.random.Generator, shape: Shape, size: int) -> float:
    return size * rng.uniform(*SIZES[shape[0]])


def _place_pair(rng: np.random.Generator, size: int, ra: float, rb: float) -> tuple[tuple[float, float], ...]:
    """Centres (x, y) of shape A left of shape B: boxes apart by a gap, |dy| <= dx / 3."""
    gap = max(2.0, 0.05 * size)
    free = size - 2 * MARGIN - 2 * ra - 2 * rb - gap  # >= 0 for size >= MIN_SIZE
    cut = np.sort(rng.uniform(0, free, size=2))  # the spare width, split into left margin, gap, right margin
    xa = MARGIN + cut[0] + ra
    xb = xa + ra + gap + (cut[1] - cut[0]) + rb
    spread = (xb - xa) / 3
    ya = rng.uniform(MARGIN + ra, size - MARGIN - ra)
    lo, hi = max(MARGIN + rb, ya - spread), min(size - MARGIN - rb, ya + spread)
    if lo > hi:  # B cannot sit near A's height here; the centre line always leaves room for both
        ya = size / 2
        lo, hi = max(MARGIN + rb, ya - spread), min(size - MARGIN - rb, ya + spread)
    return (xa, ya), (xb, rng.uniform(lo, hi))


def _draw(draw: ImageDraw.ImageDraw, form: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """One shape inside the box [cx - r, cx + r] x [cy - r, cy + r]."""
    if form == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif form == "square":
        h = 0.85 * r  # about a circle's area
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif form == "triangle":  # pointing up
        draw.polygon([(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6,
                                                                             11 * math.pi / 6)], fill=fill)
    elif form == "diamond":  # taller than wide, so never a square turned by 45 degrees
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    else:  # a five-pointed star, a point up
        points = [(cx + rr * math.sin(k * math.pi / 5), cy - rr * math.cos(k * math.pi / 5))
                  for k, rr in zip(range(10), [r, 0.45 * r] * 5, strict=True)]
        draw.polygon(points, fill=fill)


def _captions(rng: np.random.Generator, shapes: list[Shape], relation: str) -> list[str]:
    """3-5 different captions; `relation` says where shapes[0] is relative to shapes[1] (two shapes only)."""
    if len(shapes) == 1:
        s, c, sh = shapes[0]
        art = "an" if c[0] in "aeiou" else "a"  # an orange
        options = [t.format(s=s, c=c, sh=sh, art=art) for t in ONE_TEMPLATES]
    else:
        a, b = map(_describe, shapes)
        views = ((a, relation, b), (b, INVERSE[relation], a))
        options = [t.format(a=x, rel=phrase, b=y) for t in TWO_TEMPLATES for x, rel, y in views
                   for phrase in RELATIONS[rel]]
    k = int(rng.integers(CAPTIONS[0], CAPTIONS[1] + 1))
    return [options[int(i)] for i in rng.choice(len(options), size=min(k, len(options)), replace=False)]


def make_scene(rng: np.random.Generator, size: int, test: bool) -> tuple[Image.Image, list[str], list[Shape]]:
    """One (RGB image, captions, shapes) drawn from `rng`; a test scene shows a HELD_OUT pair, others never do."""
    first = _pick_shape(rng, True if test else False)
    shapes = [first]
    if rng.random() < TWO_SHAPES:
        second = _pick_shape(rng, None if test else False)
        while second == first:
            second = _pick_shape(rng, None if test else False)
        shapes = [first, second] if rng.random() < 0.5 else [second, first]  # the held-out one on either side
    radii = [_radius(rng, s, size) for s in shapes]
    relation = ""
    if len(shapes) == 1:
        r = radii[0]
        centres = [tuple(rng.uniform(MARGIN + r, size - MARGIN - r, size=2))]
    else:
        (xa, ya), (xb, yb) = _place_pair(rng, size, *radii)  # shapes[0] left of shapes[1]
        relation = ("left", "right", "above", "below")[int(rng.integers(4))]
        if relation in ("right", "below"):  # mirror the layout
            xa, xb = size - xa, size - xb
        centres = [(xa, ya), (xb, yb)] if relation in ("left", "right") else [(ya, xa), (yb, xb)]  # swap axes
    background = tuple(int(v) for v in rng.integers(BACKGROUND[0], BACKGROUND[1] + 1, size=3))
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), background)
    draw = ImageDraw.Draw(big)
    for (_, colour, form), (cx, cy), r in zip(shapes, centres, radii, strict=True):
        _draw(draw, form, cx * SUPERSAMPLE, cy * SUPERSAMPLE, r * SUPERSAMPLE, COLOURS[colour])
    small = big.resize((size, size), Image.Resampling.BOX)  # the average of each SUPERSAMPLE^2 block
    noisy = np.asarray(small, dtype=np.float32) + rng.standard_normal((size, size, 3), dtype=np.float32) * NOISE
    image = Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8))
    return image, _captions(rng, shapes, relation), shapes


def generate_scenes(out_dir: str | Path, n_train: int = 2000, n_valid: int = 200, n_test: int = 200, size: int = 64,
                    seed: int = 0) -> dict:
    """Write OUT/images/{split}_{i:05d}.png, OUT/{train,valid,test}.tsv and OUT/README.md (see the module docstring).

    A split with 0 images is not written. Returns {"splits": {split: {"tsv": path, "images": n, "captions": m}},
    "held_out": ["red square", ...], "readme": path}.
    """
    if size < MIN_SIZE or seed < 0 or min(n_train, n_valid, n_test) < 0:
        raise ValueError(f"need size >= {MIN_SIZE}, seed >= 0 and counts >= 0; got size={size}, seed={seed}, "
                         f"counts {n_train}/{n_valid}/{n_test}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_valid, n_test), strict=True)):
        if n == 0:
            continue
        lines = []
        for i in range(n):
            name = f"images/{split}_{i:05d}.png"
            image, captions, _ = make_scene(np.random.default_rng([seed, k, i]), size, split == "test")
            image.save(out / name, compress_level=1)  # noisy pixels barely compress
            lines += [f"{name}\t{c}\n" for c in captions]
        tsv = out / f"{split}.tsv"
        tsv.write_text("".join(lines), encoding="utf-8")
        splits[split] = {"tsv": str(tsv), "images": n, "captions": len(lines)}
    readme = out / "README.md"
    readme.write_text(_readme(splits, size, seed), encoding="utf-8")
    return {"splits": splits, "held_out": [f"{c} {s}" for c, s in HELD_OUT], "readme": str(readme)}


def _readme(splits: dict, size: int, seed: int) -> str:
    counts = "\n".join(f"| {s}.tsv | {v['images']} | {v['captions']} |" for s, v in splits.items())
    n = {s: splits.get(s, {}).get("images", 0) for s in SPLITS}
    templates = "\n".join(f"- `{t}`" for t in ONE_TEMPLATES + TWO_TEMPLATES)
    relations = "; ".join(f"{k}: " + " / ".join(f"`{p}`" for p in v) for k, v in RELATIONS.items())
    return f"""# Generated scenes: captioning that measures composition

Made by `crossway data scenes OUT --train {n['train']} --valid {n['valid']} --test {n['test']} --size {size} \
--seed {seed}` (crossway.data.scenes.generate_scenes).

| file | images | captions |
| --- | --- | --- |
{counts}

Each line of a TSV is `images/NAME.png<TAB>caption`; an image has {CAPTIONS[0]}-{CAPTIONS[1]} lines (captions).
Images are {size}x{size} RGB PNGs: one shape, or two with probability {TWO_SHAPES}, on a plain light background
(each channel {BACKGROUND[0]}-{BACKGROUND[1]}) with Gaussian pixel noise of std {NOISE}.

Attributes of a shape:
- colour: {", ".join(f"{k} {v}" for k, v in COLOURS.items())} (RGB)
- shape: {", ".join(SHAPES)}
- size: small (radius {SIZES['small'][0]}-{SIZES['small'][1]} of the side), large \
({SIZES['large'][0]}-{SIZES['large'][1]})
- with two shapes, where the first named is relative to the other: {relations}. The shapes' boxes are apart along
  that axis and their offset across it is at most a third of their distance along it, so the relation is never
  ambiguous.

Caption templates ({{s}} size, {{c}} colour, {{sh}} shape, {{art}} "a" or "an"; {{a}} and {{b}} are
"size colour shape", either shape
first, with the relation phrased from its side); each image gets {CAPTIONS[0]}-{CAPTIONS[1]} different ones:
{templates}

Held-out (colour, shape) pairs, in no train or valid image and in every test image (at least one shape):
{", ".join(f"{c} {s}" for c, s in HELD_OUT)}.

Seed {seed}: each image is drawn from numpy.random.default_rng([seed, split index, image index]), so the same
arguments give byte-identical files.
"""
