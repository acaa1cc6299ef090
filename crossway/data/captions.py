"""Images with reference captions, for image-to-text tasks (captioning, text-line OCR): reading and checking them.

Two layouts are read:

- a TSV file, one line `image_path<TAB>caption` per reference. The image path is relative to the TSV's folder
  unless it is absolute. Several lines naming the same image give that image several references; images keep the
  order of their first line. Lines are split on "\\n" only and must be strict UTF-8 (crossway.data.text).
- a folder of images NAME.<png|jpg|jpeg|tif|tiff|bmp>, each with NAME.txt beside it holding its references, one
  a line.

Nothing is skipped: a blank line (but for the one newline that ends the file), a line without exactly two fields,
an empty image path or caption, a missing or unreadable image, an image without captions or captions without an
image are all problems naming the file and line. Every problem found is listed in one DataError. Captions are
stripped of surrounding whitespace, nothing else. Images are only checked here (their header, cheaply, with
`open_image(..., decode=False)`), not decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crossway.data.images import IMAGE_EXTS, MAX_PIXELS, _summary, open_image
from crossway.data.text import is_blank, read_lines
from crossway.errors import DataError

CAPTION_EXT = ".txt"  # the folder layout's caption files


@dataclass(frozen=True)
class CaptionExample:
    image: Path  # the image file
    captions: tuple[str, ...]  # its references, in file order, stripped, none empty
    where: str  # where they came from, for messages: "train.tsv:12,15" (file:lines) or "dir/NAME.txt"


def read_captions(path: str | Path, *, check_images: bool = True,
                  max_pixels: int = MAX_PIXELS) -> list[CaptionExample]:
    """The examples of a caption TSV file or a caption folder (see the module docstring), checked.

    check_images: open each image's header (format, size against `max_pixels`) as well as checking that it
    exists. Raises one DataError listing every problem found (the first MAX_PROBLEMS of them).
    """
    root = Path(path)
    if root.is_dir():
        examples, problems = _read_folder(root, check_images, max_pixels)
    elif root.is_file():
        examples, problems = _read_tsv(root, check_images, max_pixels)
    else:
        raise DataError(f"{root}: no such file or folder (captions are a TSV file image_path<TAB>caption, or a "
                        f"folder of images each with NAME.txt)")
    if problems:
        raise DataError(_summary(root, problems))
    if not examples:
        what = ("no lines (expected image_path<TAB>caption, one line per caption)" if root.is_file()
                else f"no images with captions (expected NAME.png ... with NAME{CAPTION_EXT} beside it)")
        raise DataError(f"{root}: {what}")
    return examples


def _read_tsv(path: Path, check: bool, max_pixels: int) -> tuple[list[CaptionExample], list[str]]:
    refs: dict[Path, tuple[list[str], list[int]]] = {}  # image -> (captions, line numbers); first-line order
    bad: dict[Path, int] = {}  # image -> the line that reported it
    problems = []
    for i, line in enumerate(read_lines(path), start=1):
        here = f"{path}:{i}"
        if is_blank(line):
            problems.append(f"{here}: blank line (expected image_path<TAB>caption)")
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            n = len(fields)
            problems.append(f"{here}: {n} tab-separated field{'s' if n > 1 else ''}, expected 2 "
                            f"(image_path<TAB>caption)")
            continue
        name, caption = fields[0], fields[1].strip()
        if not name.strip():
            problems.append(f"{here}: empty image path (field 1)")
            continue
        if not caption:
            problems.append(f"{here}: empty caption (field 2)")
            continue
        image = Path(os.path.normpath(path.parent / name))  # "a.png" and "./a.png" are one image
        if image in bad:
            problems.append(f"{here}: image path (field 1) {name!r}: the image of line {bad[image]}, see there")
            continue
        if image not in refs:
            problem = _check_image(image, check, max_pixels)
            if problem:
                problems.append(f"{here}: image path (field 1) {name!r}: {problem}")
                bad[image] = i
                continue
            refs[image] = ([], [])
        refs[image][0].append(caption)
        refs[image][1].append(i)
    examples = [CaptionExample(image, tuple(caps), f"{path}:{','.join(map(str, lines))}")
                for image, (caps, lines) in refs.items()]
    return examples, problems


def _read_folder(root: Path, check: bool, max_pixels: int) -> tuple[list[CaptionExample], list[str]]:
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    problems = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        suffix = p.suffix.lower()
        if suffix not in (*IMAGE_EXTS, CAPTION_EXT):
            problems.append(f"{p}: not an image ({', '.join(IMAGE_EXTS)}) or a caption file ({CAPTION_EXT})")
        elif suffix == CAPTION_EXT:
            texts[p.stem] = p
        elif p.stem in images:
            problems.append(f"{p}: same name as {images[p.stem]}; which one do {p.stem}{CAPTION_EXT}'s captions "
                            f"describe?")
        else:
            images[p.stem] = p
    examples = []
    for name, image in images.items():
        text = texts.get(name)
        if text is None:
            problems.append(f"{image}: no captions; expected {root / name}{CAPTION_EXT} (one caption a line)")
            continue
        problem = _check_image(image, check, max_pixels)
        if problem:
            problems.append(f"{image}: {problem}")
            continue
        captions = []
        try:
            lines = read_lines(text)
        except DataError as e:
            problems.append(str(e))
            continue
        for i, line in enumerate(lines, start=1):
            if is_blank(line):
                problems.append(f"{text}:{i}: empty caption line (one caption a line, none empty)")
            else:
                captions.append(line.strip())
        if not lines:
            problems.append(f"{text}: no captions (the file is empty)")
        elif len(captions) == len(lines):
            examples.append(CaptionExample(image, tuple(captions), str(text)))
    for name in sorted(set(texts) - set(images)):
        problems.append(f"{texts[name]}: captions without an image; expected {root / name}"
                        f"{{{','.join(IMAGE_EXTS)}}}")
    return examples, problems


def _check_image(image: Path, check: bool, max_pixels: int) -> str:
    """What is wrong with an image file ("" if nothing): missing, or (when `check`) an unreadable header."""
    if not image.is_file():
        return f"no such file ({image})"
    if check:
        try:
            with open_image(image, max_pixels, decode=False):
                pass
        except DataError as e:  # its message starts with the file's name
            return str(e).removeprefix(f"{image}: ") + f" ({image})"
    return ""
