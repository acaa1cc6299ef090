"""`crossway data scenes` and `crossway data textlines`: each writes its set and prints one summary line; bad
arguments are clean errors (exit 2)."""

from __future__ import annotations

import pytest

from crossway.cli import main
from crossway.data.captions import read_captions
from crossway.data.textlines import find_fonts


def test_data_scenes(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert main(["data", "scenes", str(out), "--train", "3", "--valid", "1", "--test", "2", "--size", "32",
                 "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "train 3 images" in printed and "held out for test: red square" in printed
    assert [len(read_captions(out / f"{s}.tsv")) for s in ("train", "valid", "test")] == [3, 1, 2]
    assert main(["data", "scenes", str(tmp_path / "small"), "--size", "8"]) == 2
    assert "size >= 32" in capsys.readouterr().err


@pytest.mark.skipif(len(find_fonts()[0]) < 2, reason="fewer than 2 font families installed")
def test_data_textlines(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("".join(f"line {i} of some text to read\n" for i in range(200)), encoding="utf-8")
    out = tmp_path / "lines"
    assert main(["data", "textlines", str(out), "--text", str(tmp_path / "t.txt"), "--train", "4", "--valid", "1",
                 "--test", "1", "--height", "20", "--max-chars", "12"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "train 4 lines" in printed and "see " in printed
    assert len(read_captions(out / "train.tsv")) == 4
    assert main(["data", "textlines", str(out), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read" in capsys.readouterr().err
