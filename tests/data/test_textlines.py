"""The generated text-line OCR set: pieces cut at spaces, test text and fonts unseen in training, exact image
heights, TSVs readable by read_captions, what was left out counted, and the same bytes for the same seed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from crossway.data.captions import read_captions
from crossway.data.textlines import HELD_OUT_FONT, cut_pieces, find_fonts, generate_textlines
from crossway.errors import DataError

HEIGHT, MAX_CHARS = 24, 24
COUNTS = {"train": 30, "valid": 5, "test": 5}
FAMILIES = find_fonts()[0]
needs_fonts = pytest.mark.skipif(len(FAMILIES) < 2, reason="fewer than 2 font families installed (Debian: "
                                                            "apt-get install fonts-dejavu-core fonts-liberation)")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _text(path: Path) -> Path:
    """400 lines of random words, plus 3 empty lines, a line with a tab, a word too long, a repeated line and a
    character no font has (a private-use one)."""
    rng = random.Random(0)
    words = ["river", "stone", "Ünter", "café", "the", "of", "and", "light", "seven", "north", "quiet", "12", "x,",
             "(bread)", "naïve", "walls;", "Ever"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    lines[5:5] = ["", "   ", "", "left\tright", "a" * 60 + " tail", "the the", "the the", "glyph \ue000 here"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cut_pieces():
    assert cut_pieces("a " + "x" * 30 + " b", 12) == ["a", "x" * 12, "x" * 12, "x" * 6 + " b"]
    assert cut_pieces("one  two   three four", 9) == ["one two", "three", "four"]
    assert cut_pieces("exactly nine", 12) == ["exactly nine"]
    assert cut_pieces("   ", 5) == []


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("textlines")
    text = _text(tmp / "text.txt")
    out = tmp / "out"
    return text, out, generate_textlines(out, text, *COUNTS.values(), height=HEIGHT, max_chars=MAX_CHARS, seed=1)


@needs_fonts
def test_counts_heights_and_lengths(lines):
    _, out, info = lines
    assert {s: v["images"] for s, v in info["splits"].items()} == COUNTS
    for split, n in COUNTS.items():
        examples = read_captions(out / f"{split}.tsv")
        assert len(examples) == n
        for e in examples:
            assert len(e.captions) == 1 and 0 < len(e.captions[0]) <= MAX_CHARS
            with Image.open(e.image) as im:
                assert im.mode == "L" and im.height == HEIGHT and im.width >= HEIGHT // 2


@needs_fonts
def test_test_text_and_fonts_are_unseen_in_training(lines):
    _, out, info = lines
    text = {s: {e.captions[0] for e in read_captions(out / f"{s}.tsv")} for s in COUNTS}
    assert not (text["test"] & text["train"]) and not (text["valid"] & text["train"])
    fonts = {}
    for row in (out / "fonts.tsv").read_text(encoding="utf-8").splitlines():
        name, family, _ = row.split("\t")
        fonts.setdefault(name.split("/")[1].split("_")[0], set()).add(family)
    assert fonts.keys() == set(COUNTS)
    assert not (fonts["test"] & (fonts["train"] | fonts["valid"])), fonts
    held = HELD_OUT_FONT if HELD_OUT_FONT in FAMILIES else sorted(FAMILIES)[-1]
    assert fonts["test"] == {held} and info["splits"]["test"]["families"] == [held]
    assert len(fonts["train"]) > 1


@needs_fonts
def test_what_was_left_out_is_counted(lines):
    _, _, info = lines
    assert info["skipped"]["empty lines"] == 3
    assert info["skipped"]["pieces holding a tab"] == 1
    assert info["skipped"]["repeated pieces"] >= 1
    assert sum(n for reason, n in info["skipped"].items() if reason.startswith("pieces no ")) == 1
    readme = Path(info["readme"]).read_text(encoding="utf-8")
    assert "empty lines skipped: 3" in readme and "pieces holding a tab skipped: 1" in readme
    assert f"--train 30 --valid 5 --test 5 --height {HEIGHT} --max-chars {MAX_CHARS} --seed 1" in readme


@needs_fonts
def test_same_seed_same_bytes(lines, tmp_path):
    text, out, _ = lines
    generate_textlines(tmp_path / "again", text, *COUNTS.values(), height=HEIGHT, max_chars=MAX_CHARS, seed=1)
    assert _files(tmp_path / "again") == _files(out)


@needs_fonts
def test_a_short_split_is_written_whole_and_reported(tmp_path):
    (tmp_path / "t.txt").write_text("alpha beta\ngamma\n", encoding="utf-8")
    info = generate_textlines(tmp_path / "out", tmp_path / "t.txt", 50, 0, 0, max_chars=10)
    train = info["splits"]["train"]
    assert train["images"] == train["available"] <= 2
    assert "Shortfall: train: asked 50" in Path(info["readme"]).read_text(encoding="utf-8")


def test_fewer_than_two_font_families_is_an_error(tmp_path):
    (tmp_path / "fonts").mkdir()
    (tmp_path / "t.txt").write_text("alpha\n", encoding="utf-8")
    with pytest.raises(DataError, match="at least 2 families.*found none.*fonts-liberation"):
        generate_textlines(tmp_path / "out", tmp_path / "t.txt", fonts_dir=tmp_path / "fonts")
