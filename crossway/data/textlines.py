"""A generated text-line OCR data set: pieces of a text file rendered in the fonts installed on the machine.

Text: any UTF-8 text file (strict; lines split on "\\n" only), one text a line; the whole line is the text, so cut
a column out of a TSV file first (`cut -f2 train.tsv`). Words are separated by spaces (runs of them count as one),
and each line is cut at word boundaries into pieces of at most `max_chars` characters (a longer word is cut into
max_chars pieces), each stripped. Nothing is dropped silently; these are counted and reported in the README and
the returned dict: empty lines (no text), pieces holding a tab (which cannot go in a TSV field), pieces that no
font of their split can draw (a character without a glyph there) and repeated pieces (written once at most).

Splits: a piece's split is a function of a hash of its text (VALID_SHARE and TEST_SHARE of the pieces), so test
and valid text never appears in train; then n pieces of each split are sampled with the seed. A split holding
fewer pieces than asked is written whole and the shortfall reported.

Fonts: the .ttf and .otf files under FONT_DIRS (or `fonts_dir`), grouped by family name. One family renders the test
split only (HELD_OUT_FONT when installed, else the last family alphabetically); train and valid use the others. A
piece gets a random family of its split, then a random file (style) of that family that has all its glyphs.

Rendering: ink (gray INK) on paper (gray PAPER) at a font size in FONT_SIZE px, with a small random padding
(PAD_X, PAD_Y), rotated by up to ROTATE degrees, blurred with probability BLUR, resized to exactly `height` px
tall (the width in proportion, rounded), plus Gaussian pixel noise (NOISE). Images are 8-bit grayscale PNGs.

Files: OUT/images/{split}_{i:05d}.png, OUT/{train,valid,test}.tsv (`images/NAME.png<TAB>text`, one line an
image; crossway.data.captions.read_captions reads them), OUT/fonts.tsv (`images/NAME.png<TAB>family<TAB>font
file`) and OUT/README.md with the recipe. Every image comes from a generator seeded by (seed, split, index): the
same text, arguments and fonts give byte-identical files (for a given Pillow, FreeType and numpy).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from crossway.data.text import read_lines
from crossway.errors import DataError

SPLITS = ("train", "valid", "test")
VALID_SHARE = TEST_SHARE = 0.05  # of the distinct pieces, by hash of their text
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
FONT_EXTS = (".ttf", ".otf")
HELD_OUT_FONT = "Liberation Serif"
FONT_SIZE = (18, 28)  # px, inclusive
PAD_X, PAD_Y = (2, 8), (1, 4)  # px of paper left/right and above/below the text before rotation, inclusive
PAPER, INK = (205, 255), (0, 70)  # gray levels, inclusive
ROTATE = 2.0  # degrees, either way
BLUR, BLUR_RADIUS = 0.3, (0.3, 1.0)  # probability of a Gaussian blur, and its radius in px (before resizing)
NOISE = (2.0, 8.0)  # std of the Gaussian pixel noise, 0..255 units
GLYPH_PROBE = 24  # px size at which glyphs are compared with the font's "missing glyph" box


def cut_pieces(line: str, max_chars: int) -> list[str]:
    """`line` cut at spaces into stripped pieces of at most max_chars characters; a longer word is cut."""
    pieces, current = [], ""
    for word in line.split(" "):
        while len(word) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if current and len(current) + 1 + len(word) <= max_chars:
            current += " " + word
        else:
            if current:
                pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces]


def find_fonts(fonts_dir: str | Path | None = None) -> tuple[dict[str, list[Path]], list[str]]:
    """Font family -> its files (sorted), from fonts_dir or FONT_DIRS; and the files FreeType could not read."""
    dirs = [Path(fonts_dir)] if fonts_dir is not None else [Path(d) for d in FONT_DIRS]
    families: dict[str, list[Path]] = {}
    unreadable = []
    for d in dirs:
        if fonts_dir is not None and not d.is_dir():
            raise DataError(f"{d}: no such folder (fonts_dir: a folder of .ttf/.otf files)")
        for p in sorted(q for q in d.rglob("*") if q.suffix.lower() in FONT_EXTS and q.is_file()):
            try:
                family = ImageFont.truetype(str(p), GLYPH_PROBE).getname()[0] or p.stem
            except OSError as e:
                unreadable.append(f"{p} ({e})")
                continue
            families.setdefault(family, []).append(p)
    return dict(sorted(families.items())), unreadable


def _split_fonts(fonts_dir: str | Path | None) -> tuple[dict[str, list[Path]], list[str], dict[str, list[str]]]:
    """find_fonts' families and unreadable files, and the families of each split (one held out for test)."""
    families, unreadable = find_fonts(fonts_dir)
    if len(families) < 2:
        found = ", ".join(f"{f} ({len(v)} files)" for f, v in families.items()) or "none"
        raise DataError(f"{fonts_dir or ' and '.join(FONT_DIRS)}: text lines need fonts of at least 2 families (one "
                        f"renders the test split only); found {found}. Install some (Debian: apt-get install "
                        f"fonts-dejavu-core fonts-liberation) or pass a folder of .ttf/.otf files")
    held = HELD_OUT_FONT if HELD_OUT_FONT in families else list(families)[-1]
    train = [f for f in families if f != held]
    return families, unreadable, {"train": train, "valid": train, "test": [held]}


def _split_of(piece: str) -> int:
    u = int.from_bytes(hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest(), "big") / 2 ** 64
    return 2 if u < TEST_SHARE else 1 if u < TEST_SHARE + VALID_SHARE else 0


def _missing_glyphs(files: list[Path], chars: set[str]) -> dict[Path, set[str]]:
    """For each font file, the characters of `chars` it draws as its "missing glyph" box (whitespace never is)."""
    missing = {}
    for p in files:
        font = ImageFont.truetype(str(p), GLYPH_PROBE)
        box = font.getmask("\uffff")  # a noncharacter: every font draws its missing-glyph box
        box = (box.size, bytes(box))
        missing[p] = {c for c in chars if not c.isspace() and _glyph(font, c) == box}
    return missing


def _fonts_for(chars: set[str], names: list[str], families: dict[str, list[Path]],
               missing: dict[Path, set[str]]) -> dict[str, list[Path]]:
    """Those of the families `names` that can draw all of `chars`, with their files that can."""
    options = {f: [p for p in families[f] if not (chars & missing[p])] for f in names}
    return {f: v for f, v in options.items() if v}


def _glyph(font: ImageFont.FreeTypeFont, c: str) -> tuple:
    m = font.getmask(c)
    return m.size, bytes(m)


class _Renderer:
    """Draws pieces of text; keeps one FreeType face per (file, size)."""

    def __init__(self, height: int):
        self.height = height
        self.fonts: dict[tuple[Path, int], ImageFont.FreeTypeFont] = {}

    def render(self, rng: np.random.Generator, text: str, font_file: Path) -> Image.Image:
        size = int(rng.integers(FONT_SIZE[0], FONT_SIZE[1] + 1))
        font = self.fonts.get((font_file, size))
        if font is None:
            font = self.fonts[font_file, size] = ImageFont.truetype(str(font_file), size)
        ascent, descent = font.getmetrics()
        left, top, right, bottom = font.getbbox(text)  # relative to the left end of the ascender line
        left, top, bottom = min(0, left), min(0, top), max(ascent + descent, bottom)  # whole lines, all the ink
        pl, pr = (int(v) for v in rng.integers(PAD_X[0], PAD_X[1] + 1, size=2))
        pt, pb = (int(v) for v in rng.integers(PAD_Y[0], PAD_Y[1] + 1, size=2))
        paper, ink = int(rng.integers(PAPER[0], PAPER[1] + 1)), int(rng.integers(INK[0], INK[1] + 1))
        image = Image.new("L", (right - left + pl + pr, bottom - top + pt + pb), paper)
        ImageDraw.Draw(image).text((pl - left, pt - top), text, font=font, fill=ink)
        image = image.rotate(rng.uniform(-ROTATE, ROTATE), Image.Resampling.BILINEAR, expand=True, fillcolor=paper)
        if rng.random() < BLUR:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS)))
        width = max(1, round(image.width * self.height / image.height))
        image = image.resize((width, self.height), Image.Resampling.BILINEAR)
        noise = rng.standard_normal((self.height, width), dtype=np.float32) * np.float32(rng.uniform(*NOISE))
        return Image.fromarray((np.asarray(image, dtype=np.float32) + noise).round().clip(0, 255).astype(np.uint8))


def _read_pieces(path: Path, max_chars: int) -> tuple[list[str], Counter]:
    """The distinct pieces of the text file, in order of first appearance, and what was left out."""
    seen: dict[str, None] = {}
    skipped = Counter({"empty lines": 0, "pieces empty after strip": 0, "pieces holding a tab": 0,
                       "repeated pieces": 0})
    for line in read_lines(path):
        if not line.strip():
            skipped["empty lines"] += 1
            continue
        for piece in cut_pieces(line, max_chars):
            if not piece:
                skipped["pieces empty after strip"] += 1
            elif "\t" in piece:
                skipped["pieces holding a tab"] += 1
            elif piece in seen:
                skipped["repeated pieces"] += 1
            else:
                seen[piece] = None
    return list(seen), skipped


def generate_textlines(out_dir: str | Path, text: str | Path, n_train: int = 20000, n_valid: int = 500,
                       n_test: int = 500, height: int = 32, max_chars: int = 48, seed: int = 0,
                       fonts_dir: str | Path | None = None) -> dict:
    """Render pieces of the text file `text` as line images (see the module docstring) into out_dir.

    Returns {"splits": {split: {"tsv": path, "images": n, "available": distinct pieces of the split, "families":
    [...]}}, "skipped": {reason: count}, "readme": path}. A split with 0 images is not written.
    """
    if height < 8 or max_chars < 1 or seed < 0 or min(n_train, n_valid, n_test) < 0:
        raise ValueError(f"need height >= 8, max_chars >= 1, seed >= 0 and counts >= 0; got height={height}, "
                         f"max_chars={max_chars}, seed={seed}, counts {n_train}/{n_valid}/{n_test}")
    families, unreadable, split_families = _split_fonts(fonts_dir)
    pieces, skipped = _read_pieces(Path(text), max_chars)
    missing = _missing_glyphs([p for v in families.values() for p in v], set("".join(pieces)))
    pools: dict[str, list[str]] = {s: [] for s in SPLITS}
    for piece in pieces:
        split = SPLITS[_split_of(piece)]
        if _fonts_for(set(piece), split_families[split], families, missing):
            pools[split].append(piece)
        else:
            skipped[f"pieces no {split} font can draw (a character without a glyph)"] += 1
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    renderer, splits, font_lines = _Renderer(height), {}, []
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_valid, n_test), strict=True)):
        if n == 0:
            continue
        pool = pools[split]
        chosen = np.random.default_rng([seed, k]).choice(len(pool), size=min(n, len(pool)), replace=False)
        lines = []
        for i, j in enumerate(chosen):
            piece, rng, name = pool[int(j)], np.random.default_rng([seed, k, i]), f"images/{split}_{i:05d}.png"
            options = _fonts_for(set(piece), split_families[split], families, missing)
            family = list(options)[int(rng.integers(len(options)))]
            font_file = options[family][int(rng.integers(len(options[family])))]
            renderer.render(rng, piece, font_file).save(out / name, compress_level=1)
            lines.append(f"{name}\t{piece}\n")
            font_lines.append(f"{name}\t{family}\t{font_file.name}\n")
        tsv = out / f"{split}.tsv"
        tsv.write_text("".join(lines), encoding="utf-8")
        splits[split] = {"tsv": str(tsv), "images": len(lines), "available": len(pool),
                         "families": split_families[split]}
    (out / "fonts.tsv").write_text("".join(font_lines), encoding="utf-8")
    readme = out / "README.md"
    args = {"text": str(text), "height": height, "max_chars": max_chars, "seed": seed, "n": (n_train, n_valid, n_test)}
    readme.write_text(_readme(args, splits, families, dict(skipped), unreadable, len(pieces)), encoding="utf-8")
    return {"splits": splits, "skipped": dict(skipped), "readme": str(readme)}


def _readme(args: dict, splits: dict, families: dict, skipped: dict, unreadable: list[str], distinct: int) -> str:
    n = dict(zip(SPLITS, args["n"], strict=True))
    rows = "\n".join(f"| {s}.tsv | {n[s]} | {v['images']} | {v['available']} | {', '.join(v['families'])} |"
                     for s, v in splits.items())
    short = [f"{s}: asked {n[s]}, the split holds only {v['available']} pieces" for s, v in splits.items()
             if v["images"] < n[s]]
    skips = "\n".join(f"- {reason} skipped: {count}" for reason, count in skipped.items())
    shortfall = f"\nShortfall: {'; '.join(short)}.\n" if short else ""
    fonts = "\n".join(f"- {f}: {', '.join(p.name for p in v)}" for f, v in families.items())
    bad = "".join(f"\nFont files FreeType could not read (not used): {', '.join(unreadable)}." if unreadable else "")
    return f"""# Generated text lines: OCR of rendered text

Made by `crossway data textlines OUT --text {args['text']} --train {n['train']} --valid {n['valid']} \
--test {n['test']} --height {args['height']} --max-chars {args['max_chars']} --seed {args['seed']}`
(crossway.data.textlines.generate_textlines).

| file | asked | images | distinct pieces in the split | font families |
| --- | --- | --- | --- | --- |
{rows}
{shortfall}
Each line of a TSV is `images/NAME.png<TAB>text`; fonts.tsv says which font drew each image
(`images/NAME.png<TAB>family<TAB>font file`).

Text: each line of the file is cut at spaces into pieces of at most {args['max_chars']} characters, {distinct}
distinct pieces in all. A piece's split is a function of a hash of its text ({VALID_SHARE:.0%} valid,
{TEST_SHARE:.0%} test, the rest train), so valid and test text is never training text; the images of a split are a
sample of its pieces (seed {args['seed']}). A repeated piece is one piece. Left out:
{skips}

Fonts: the test split is drawn in a family no other split uses. Installed families and their files:
{fonts}{bad}

Rendering: gray ink {INK[0]}-{INK[1]} on paper {PAPER[0]}-{PAPER[1]}, font size {FONT_SIZE[0]}-{FONT_SIZE[1]} px,
padding {PAD_X[0]}-{PAD_X[1]} px left and right and {PAD_Y[0]}-{PAD_Y[1]} px above and below, rotated by up to
{ROTATE} degrees either way, a Gaussian blur of radius {BLUR_RADIUS[0]}-{BLUR_RADIUS[1]} px with probability
{BLUR}, resized to {args['height']} px tall (width in proportion), Gaussian noise of std {NOISE[0]}-{NOISE[1]}.
Images are 8-bit grayscale PNGs, each drawn from numpy.random.default_rng([seed, split index, image index]).
"""
