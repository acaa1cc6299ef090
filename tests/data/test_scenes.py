"""The generated scenes captioning set: deterministic, readable by read_captions, held-out colour-shape pairs only
in test, and captions that say what the image shows (its colours, where the shapes are)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossway.data.captions import read_captions
from crossway.data.scenes import COLOURS, HELD_OUT, SHAPES, generate_scenes

SIZE = 48
COUNTS = {"train": 40, "valid": 10, "test": 20}
NEAR = 45  # a pixel within this L1 distance of a colour's RGB shows that colour (noise std is 3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scenes")
    return out, generate_scenes(out, *COUNTS.values(), size=SIZE, seed=3)


@pytest.fixture(scope="module")
def examples(scenes) -> dict:
    out, _ = scenes
    return {split: read_captions(out / f"{split}.tsv") for split in COUNTS}


def _near(image: np.ndarray, colour: str) -> np.ndarray:
    """(H, W) bool: pixels showing `colour`."""
    return np.abs(image.astype(int) - np.array(COLOURS[colour])).sum(-1) <= NEAR


def test_layout_counts_and_readme(scenes, examples):
    out, info = scenes
    assert {s: v["images"] for s, v in info["splits"].items()} == COUNTS
    assert info["held_out"] == [f"{c} {s}" for c, s in HELD_OUT]
    for split, exs in examples.items():
        assert len(exs) == COUNTS[split]
        assert [e.image for e in exs] == [out / "images" / f"{split}_{i:05d}.png" for i in range(COUNTS[split])]
        assert all(3 <= len(e.captions) <= 5 and len(set(e.captions)) == len(e.captions) for e in exs)
        assert sum(len(e.captions) for e in exs) == info["splits"][split]["captions"]
        with Image.open(exs[0].image) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    readme = Path(info["readme"]).read_text()
    assert "crossway data scenes OUT --train 40 --valid 10 --test 20 --size 48 --seed 3" in readme
    assert all(f"{c} {s}" in readme for c, s in HELD_OUT)


def test_captions_are_plain_lowercase_words(examples):
    for exs in examples.values():
        for e in exs:
            for c in e.captions:
                assert re.fullmatch(r"[a-z]+( [a-z]+)*", c), c


def test_held_out_pairs_only_and_always_in_test(examples):
    held = [f"{c} {s}" for c, s in HELD_OUT]
    for split in ("train", "valid"):
        for e in examples[split]:
            assert not any(h in c for h in held for c in e.captions), (e.where, e.captions)
    for e in examples["test"]:
        assert all(any(h in c for h in held) for c in e.captions), (e.where, e.captions)
    pairs = {f"{c} {s}" for c in COLOURS for s in SHAPES}
    seen = {p for e in examples["train"] for c in e.captions for p in pairs if p in c}
    assert len(seen) > len(pairs) / 2  # training shows many of the other pairs


def test_captions_name_the_colours_in_the_image_and_where_the_shapes_are(examples):
    checked_relations = 0
    for exs in examples.values():
        for e in exs:
            image = np.asarray(Image.open(e.image).convert("RGB"))
            for caption in e.captions:
                named = [w for w in caption.split() if w in COLOURS]
                for colour in COLOURS:  # the shapes' interiors show their colours; nothing else shows any
                    assert (_near(image, colour).sum() >= 4) == (colour in named), (e.where, caption, colour)
                if len(set(named)) == 2:  # two shapes of different colours: check the relation's direction
                    (ya, xa), (yb, xb) = (np.argwhere(_near(image, c)).mean(0) for c in named)
                    dx, dy = xb - xa, yb - ya  # from the first named shape to the second
                    words = caption.split()
                    relation = next(w for w in ("left", "right", "above", "below") if w in words)
                    expected = {"left": dx > 2 * abs(dy), "right": -dx > 2 * abs(dy), "above": dy > 2 * abs(dx),
                                "below": -dy > 2 * abs(dx)}
                    assert expected[relation], (e.where, caption, dx, dy)
                    checked_relations += 1
    assert checked_relations > 20


def test_same_seed_same_bytes_other_seed_differs(scenes, tmp_path):
    out, _ = scenes
    generate_scenes(tmp_path / "a", *COUNTS.values(), size=SIZE, seed=3)
    assert _files(tmp_path / "a") == _files(out)
    generate_scenes(tmp_path / "b", *COUNTS.values(), size=SIZE, seed=4)
    other = _files(tmp_path / "b")
    assert other.keys() == _files(out).keys() and other != _files(out)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size >= 32"):
        generate_scenes("unused", size=16)
