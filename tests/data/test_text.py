import pytest

from crossway.data.text import Pair, encode_pairs, read_lines, read_text_pair, read_tsv
from crossway.data.tokenizers import CharTokenizer, TextCodec, Vocab, WordTokenizer
from crossway.errors import DataError

SRC = TextCodec(CharTokenizer(), Vocab(list("abcdef")))
TGT = TextCodec(WordTokenizer(), Vocab(list("ABCDEF")))


def test_tsv_columns_by_index_and_by_name(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("ref\ten\tes\nGen 1:1\tIn the beginning\tEn el principio\nGen 1:2\tThe earth\tY la tierra\n")
    by_name = read_tsv(f, "en", "es", header=True)
    by_index = read_tsv(f, "1", "2", header=True)
    assert by_name == by_index
    assert [(p.src, p.tgt, p.line) for p in by_name] == [("In the beginning", "En el principio", 2),
                                                          ("The earth", "Y la tierra", 3)]


def test_wrong_column_count_names_file_line_and_both_counts(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("a\tA\nb\tB\nc\tC\textra\n")
    with pytest.raises(DataError, match=r"^\S*bad\.tsv:3: this line has 3 tab-separated fields, but 2 are "
                                        r"expected, as on line 1 \(the first with data\)$"):
        read_tsv(f)
    f.write_text("en\tes\nhi\thola\nyes\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: this line has 1 tab-separated field, but 2 are expected, as "
                                        r"in the header \(line 1\)$"):
        read_tsv(f, "en", "es", header=True)


def test_too_few_fields_for_a_column_says_which_column_needs_them(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("\n\nabc\n")  # the first line with data (line 3) sets the width
    with pytest.raises(DataError, match=r"train\.tsv:3: this line has 1 tab-separated field, but column 2 "
                                        r"\(data\.tgt_col=1\) needs at least 2$"):
        read_tsv(f)
    f.write_text("a\tb\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: this line has 2 tab-separated fields, but column 4 "
                                        r"\(data\.src_col=3\) needs at least 4$"):
        read_tsv(f, "3", "0")
    f.write_text("en\tes\nhi\thola\n")  # with a header, the header is checked
    with pytest.raises(DataError, match=r"train\.tsv:1: this line has 2 tab-separated fields, but column 3 "
                                        r"\(data\.tgt_col=2\) needs at least 3$"):
        read_tsv(f, "en", "2", header=True)


def test_a_blank_first_line_is_an_empty_pair_not_a_column_error(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("\nab\tB A\ncd\tD C\n")
    assert read_tsv(f) == [Pair("", "", 1), Pair("ab", "B A", 2), Pair("cd", "D C", 3)]
    examples, report = encode_pairs(read_tsv(f), SRC, TGT, 10, 10, str(f))
    assert [e.line for e in examples] == [2, 3] and report.skipped == {"empty source or target": 1}
    assert report.summary() == f"{f}: 2 examples kept; 1 skipped (empty source or target; first at line 1)"


def test_blank_lines_in_the_middle_are_skipped_and_counted(tmp_path):
    f = tmp_path / "train.tsv"  # empty, spaces only, tabs only, CRLF: all blank
    f.write_bytes(b"ab\tB A\n\ncd\tD C\n   \n\t\t\n\r\nef\tF E\n")
    pairs = read_tsv(f)
    assert [(p.src, p.tgt) for p in pairs if p.line in (2, 4, 5, 6)] == [("", "")] * 4
    examples, report = encode_pairs(pairs, SRC, TGT, 10, 10, str(f))
    assert [e.line for e in examples] == [1, 3, 7] and report.kept == 3
    assert report.skipped == {"empty source or target": 4} and report.first_lines["empty source or target"] == [
        2, 4, 5, 6]
    with_header = tmp_path / "h.tsv"
    with_header.write_text("en\tes\n\nhi\thola\n")
    assert read_tsv(with_header, "en", "es", header=True) == [Pair("", "", 2), Pair("hi", "hola", 3)]


def test_a_blank_header_line_is_an_error(tmp_path):
    f = tmp_path / "h.tsv"
    f.write_text("\nhi\thola\n")
    with pytest.raises(DataError, match=r"h\.tsv:1: the header line is blank, but data\.header=true reads the "
                                        r"column names from the first line"):
        read_tsv(f, "en", "es", header=True)
    f.write_text("")
    with pytest.raises(DataError, match="the file is empty, but a header line was expected"):
        read_tsv(f, header=True)


def test_unknown_column_name(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("en\tes\nhi\thola\n")
    with pytest.raises(DataError, match="no column named 'fr'"):
        read_tsv(f, "en", "fr", header=True)


def test_line_count_mismatch_names_both_files(tmp_path):
    (tmp_path / "a.src").write_text("".join(f"s{i}\n" for i in range(10)))
    (tmp_path / "a.tgt").write_text("".join(f"t{i}\n" for i in range(9)))
    with pytest.raises(DataError) as e:
        read_text_pair(tmp_path / "a.src", tmp_path / "a.tgt")
    assert "a.src" in str(e.value) and "a.tgt" in str(e.value) and "10 != 9" in str(e.value)


def test_invalid_utf8_names_the_line(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_bytes(b"".join(b"w%d\tW\n" % i for i in range(6)) + b"bad\xff\tX\n")
    with pytest.raises(DataError, match=r"d\.tsv:7: invalid UTF-8"):
        read_tsv(f)


def test_only_newline_splits_lines(tmp_path):
    """U+2028, U+0085, VT, FS and NUL inside a sentence keep pairs aligned; CRLF is accepted."""
    odd = ["a\u2028b", "c\x85d", "e\x0bf", "g\x1ch", "i\x00j"]
    (tmp_path / "x.src").write_text("".join(s + "\r\n" for s in odd), encoding="utf-8", newline="")
    (tmp_path / "x.tgt").write_text("".join(f"T{i}\n" for i in range(5)), encoding="utf-8")
    pairs = read_text_pair(tmp_path / "x.src", tmp_path / "x.tgt")
    assert [p.src for p in pairs] == odd and [p.tgt for p in pairs] == [f"T{i}" for i in range(5)]
    assert len(read_lines(tmp_path / "x.src")) == 5


def test_empty_and_overlong_examples_are_skipped_and_counted(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("ab\tA B\n\tA\ncd\t\nabcdefghij\tA\nab\tA B C D E F\nef\tE F\n")
    src = TextCodec(CharTokenizer(), Vocab(list("abcdefghij")))
    tgt = TextCodec(WordTokenizer(), Vocab(list("ABCDEF")))
    examples, report = encode_pairs(read_tsv(f), src, tgt, max_src_len=5, max_tgt_len=4, path=str(f))
    assert [e.line for e in examples] == [1, 6]
    assert report.kept == 2
    assert report.skipped == {"empty source or target": 2, "source longer than 5 tokens": 1,
                              "target longer than 4 tokens": 1}
    assert "first at line 2, 3" in report.summary()
