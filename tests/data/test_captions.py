"""Caption data: a TSV's lines grouped into one example per image, a folder of images with NAME.txt, and every
bad input an error naming its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from crossway.data.captions import CaptionExample, read_captions
from crossway.errors import DataError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 10, 10)).save(path)
    return path


def _tsv(folder: Path, text: str, name: str = "data.tsv") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    for name in ("a.png", "b.png", "sub/c.jpg"):
        _image(tmp_path / name)
    (tmp_path / "text.png").write_text("not an image at all\n")
    return tmp_path


def test_tsv_groups_references_in_first_appearance_order(images):
    path = _tsv(images, "b.png\ta bee\na.png\t  an ant \nb.png\tone bee\n./b.png\tthe bee\nsub/c.jpg\tsee\n")
    examples = read_captions(path)
    assert examples == [
        CaptionExample(images / "b.png", ("a bee", "one bee", "the bee"), f"{path}:1,3,4"),
        CaptionExample(images / "a.png", ("an ant",), f"{path}:2"),
        CaptionExample(images / "sub" / "c.jpg", ("see",), f"{path}:5"),
    ]


def test_tsv_absolute_paths_and_no_final_newline(images, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    path = _tsv(other, f"{images / 'a.png'}\tan ant\r\n{images / 'b.png'}\ta bee")
    assert [(e.image, e.captions) for e in read_captions(path)] == [(images / "a.png", ("an ant",)),
                                                                    (images / "b.png", ("a bee",))]


@pytest.mark.parametrize("line, fragments", [
    ("a.png\tan ant\textra", ["3 tab-separated fields, expected 2"]),
    ("a.png", ["1 tab-separated field,", "expected 2"]),
    ("a.png\t   ", ["empty caption (field 2)"]),
    ("  \tan ant", ["empty image path (field 1)"]),
    ("", ["blank line"]),
    ("nope.png\ta nothing", ["image path (field 1) 'nope.png'", "no such file"]),
    ("text.png\ta text", ["image path (field 1) 'text.png'", "not a readable image", "text.png"]),
])
def test_tsv_bad_line_names_file_and_line(images, line, fragments):
    path = _tsv(images, f"a.png\tan ant\n{line}\nb.png\ta bee\n")
    with pytest.raises(DataError) as e:
        read_captions(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: "), message
    for f in fragments:
        assert f in message, message


def test_tsv_blank_last_line_is_an_error_but_one_final_newline_is_not(images):
    assert len(read_captions(_tsv(images, "a.png\tan ant\n"))) == 1
    with pytest.raises(DataError, match=r"data\.tsv:2: blank line"):
        read_captions(_tsv(images, "a.png\tan ant\n\n"))


def test_tsv_every_problem_listed_once(images):
    path = _tsv(images, "a.png\tan ant\nnope.png\tx\na.png\t\nnope.png\ty\nb.png\tb\tc\n")
    with pytest.raises(DataError) as e:
        read_captions(path)
    message = str(e.value)
    assert message.startswith(f"{path}: 4 problems:"), message
    for n in (2, 3, 4, 5):
        assert f"{path}:{n}: " in message, message
    assert f"{path}:4: image path (field 1) 'nope.png': the image of line 2" in message


def test_tsv_invalid_utf8_names_the_line(images):
    path = images / "data.tsv"
    path.write_bytes(b"a.png\tan ant\nb.png\ta b\xffee\n")
    with pytest.raises(DataError, match=r"data\.tsv:2: invalid UTF-8"):
        read_captions(path)


def test_check_images_off_skips_the_header_but_not_the_file(images):
    assert read_captions(_tsv(images, "text.png\ta text\n"), check_images=False)[0].captions == ("a text",)
    with pytest.raises(DataError, match="no such file"):
        read_captions(_tsv(images, "nope.png\tx\n"), check_images=False)


def test_a_declared_size_over_the_limit_is_refused(images):
    with pytest.raises(DataError, match=r"data\.tsv:1: .*over the limit of 10"):
        read_captions(_tsv(images, "a.png\tan ant\n"), max_pixels=10)


def test_folder_layout(tmp_path):
    for name in ("b.png", "a.jpg"):
        _image(tmp_path / name)
    (tmp_path / "a.txt").write_text("an ant\n  a small ant\n")
    (tmp_path / "b.txt").write_text("a bee")
    (tmp_path / ".hidden").write_text("ignored")
    assert read_captions(tmp_path) == [CaptionExample(tmp_path / "a.jpg", ("an ant", "a small ant"),
                                                      str(tmp_path / "a.txt")),
                                       CaptionExample(tmp_path / "b.png", ("a bee",), str(tmp_path / "b.txt"))]


def test_folder_problems_name_the_file(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _image(tmp_path / name)
    (tmp_path / "a.txt").write_text("an ant\n\nanother ant\n")  # an empty line 2
    (tmp_path / "c.txt").write_text("")
    (tmp_path / "d.txt").write_text("a dee\n")
    (tmp_path / "d.jpg").write_bytes((tmp_path / "d.png").read_bytes())  # two images for one d.txt
    (tmp_path / "e.txt").write_text("an orphan\n")
    (tmp_path / "notes.md").write_text("# notes\n")
    with pytest.raises(DataError) as e:
        read_captions(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path}: 6 problems:"), message
    for fragment in (f"{tmp_path / 'a.txt'}:2: empty caption line", f"{tmp_path / 'b.png'}: no captions; expected",
                     f"{tmp_path / 'c.txt'}: no captions (the file is empty)", f"{tmp_path / 'd.png'}: same name as",
                     f"{tmp_path / 'e.txt'}: captions without an image",
                     f"{tmp_path / 'notes.md'}: not an image"):
        assert fragment in message, message


def test_empty_sets_and_missing_paths(tmp_path):
    _tsv(tmp_path, "")
    with pytest.raises(DataError, match=r"data\.tsv: no lines"):
        read_captions(tmp_path / "data.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images with captions"):
        read_captions(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        read_captions(tmp_path / "nowhere")
