"""Readers for parallel text: a TSV file with chosen columns, or two line-aligned text files.

Lines are split on "\\n" only (a trailing "\\r" is removed), never on other Unicode line breaks, so characters
such as U+2028 or NUL inside a sentence keep the pairs aligned. Every problem is reported with `file:line`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crossway.data.tokenizers import TextCodec
from crossway.errors import DataError


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    line: int  # 1-based line number in the file it came from (the source file for two-file corpora)


@dataclass(frozen=True)
class Example:
    src: list[int]  # token ids, no bos/eos
    tgt: list[int]
    line: int


@dataclass
class SkipReport:
    """What was left out of a data set and why; never silent."""

    path: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_lines: dict = field(default_factory=dict)  # reason -> first few line numbers

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        self.first_lines.setdefault(reason, [])
        if len(self.first_lines[reason]) < 5:
            self.first_lines[reason].append(line)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.kept} examples kept"]
        for reason, n in sorted(self.skipped.items()):
            lines = ", ".join(map(str, self.first_lines[reason]))
            parts.append(f"{n} skipped ({reason}; first at line {lines})")
        return "; ".join(parts)


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 file; invalid UTF-8 is an error naming the line and byte offset."""
    return list(iter_lines(path))


def iter_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 file, read as they are needed (memory does not grow with the file)."""
    try:
        f = open(path, "rb")  # binary lines end at b"\n" only
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for i, chunk in enumerate(f, start=1):
            yield _decode(chunk[:-1] if chunk.endswith(b"\n") else chunk, str(path), i)


def decode_lines(raw: bytes, name: str) -> list[str]:
    """Split bytes on b"\\n" (dropping a trailing "\\r") and decode each line as strict UTF-8."""
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    return [_decode(chunk, name, i) for i, chunk in enumerate(chunks, start=1)]


def _decode(chunk: bytes, name: str, line: int) -> str:
    if chunk.endswith(b"\r"):
        chunk = chunk[:-1]
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}:{line}: invalid UTF-8 at byte {e.start} of the line") from None


def _column_index(col: str, header: list[str] | None, path: Path) -> int:
    if col.isdigit():
        return int(col)
    if header is None:
        raise DataError(f"{path}: column {col!r} is a name, but the file is read without a header (data.header)")
    if col not in header:
        raise DataError(f"{path}:1: no column named {col!r}; the header has {header}")
    return header.index(col)


def _fields(n: int) -> str:
    return f"{n} tab-separated field{'s' if n != 1 else ''}"


def _check_width(fields: list[str], cols: dict[str, tuple[str, int]], path: Path, line: int) -> None:
    """The first line read (the header, or the first non-blank line) must hold every requested column."""
    name, (col, i) = max(cols.items(), key=lambda kv: kv[1][1])
    if i >= len(fields):
        raise DataError(f"{path}:{line}: this line has {_fields(len(fields))}, but column {i + 1} "
                        f"(data.{name}_col={col}) needs at least {i + 1}")


def is_blank(line: str) -> bool:
    """A line with nothing but whitespace (tabs included): no example, skipped and counted as an empty one."""
    return not line.strip()


def read_tsv(path: str | Path, src_col: str = "0", tgt_col: str = "1", header: bool = False) -> list[Pair]:
    """Pairs from a tab-separated file. Columns are 0-based indices ("0") or header names ("en")."""
    return list(iter_tsv(path, src_col, tgt_col, header))


def iter_tsv(path: str | Path, src_col: str = "0", tgt_col: str = "1", header: bool = False) -> Iterator[Pair]:
    """read_tsv, one pair at a time. Every line has as many fields as the header or, without one, the first
    non-blank line. A blank line gives an empty pair (src = tgt = ""), which encoding skips and counts."""
    path = Path(path)
    lines = enumerate(iter_lines(path), start=1)
    names, width, model_line = None, 0, 0
    if header:
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: the file is empty, but a header line was expected (data.header)")
        if is_blank(first[1]):
            raise DataError(f"{path}:1: the header line is blank, but data.header=true reads the column names "
                            "from the first line")
        names = first[1].split("\t")
    cols = {"src": (str(src_col), _column_index(str(src_col), names, path)),
            "tgt": (str(tgt_col), _column_index(str(tgt_col), names, path))}
    if names is not None:
        _check_width(names, cols, path, 1)
        width, model_line = len(names), 1
    si, ti = cols["src"][1], cols["tgt"][1]
    for n, line in lines:
        if is_blank(line):
            yield Pair("", "", n)
            continue
        fields = line.split("\t")
        if not width:
            _check_width(fields, cols, path, n)
            width, model_line = len(fields), n
        elif len(fields) != width:
            like = "in the header (line 1)" if names is not None else f"on line {model_line} (the first with data)"
            raise DataError(f"{path}:{n}: this line has {_fields(len(fields))}, but {width} are expected, as {like}")
        yield Pair(fields[si], fields[ti], n)


def read_text_pair(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    """Pairs from two line-aligned files; a line-count mismatch is an error naming both files."""
    return list(iter_text_pair(src_path, tgt_path))


def iter_text_pair(src_path: str | Path, tgt_path: str | Path) -> Iterator[Pair]:
    """read_text_pair, one pair at a time (the line-count check comes when the shorter file ends)."""
    for n, (s, t) in enumerate(itertools.zip_longest(iter_lines(src_path), iter_lines(tgt_path)), start=1):
        if s is None or t is None:
            src_n, tgt_n = _count_lines(src_path), _count_lines(tgt_path)
            raise DataError(f"line counts differ: {src_path} has {src_n} lines, {tgt_path} has {tgt_n} "
                            f"({src_n} != {tgt_n})")
        yield Pair(s, t, n)


def _count_lines(path: str | Path) -> int:
    return sum(1 for _ in iter_lines(path))


EMPTY = "empty source or target"  # the skip reason of empty pairs and blank lines


def encode_pair(p: Pair, src: TextCodec, tgt: TextCodec, max_src_len: int, max_tgt_len: int) -> Example | str:
    """The pair's token ids, or why it is skipped (a blank line has no tokens: it is an empty pair)."""
    s, t = src.encode(p.src), tgt.encode(p.tgt)
    if not s or not t:
        return EMPTY
    if len(s) > max_src_len:
        return f"source longer than {max_src_len} tokens"
    if len(t) > max_tgt_len:
        return f"target longer than {max_tgt_len} tokens"
    return Example(s, t, p.line)


def encode_pairs(pairs: list[Pair], src: TextCodec, tgt: TextCodec, max_src_len: int, max_tgt_len: int,
                 path: str) -> tuple[list[Example], SkipReport]:
    """Token ids for each pair. Empty (blank lines included) and over-long pairs are skipped and counted."""
    report = SkipReport(path)
    out = []
    for p in pairs:
        ex = encode_pair(p, src, tgt, max_src_len, max_tgt_len)
        if isinstance(ex, str):
            report.skip(ex, p.line)
        else:
            out.append(ex)
    report.kept = len(out)
    return out, report


def drop_empty(pairs: list[Pair], src: TextCodec, tgt: TextCodec, path: str) -> tuple[list[Pair], SkipReport]:
    """The pairs whose source and target both have tokens, for evaluation (no length limit); blank lines and
    other empty pairs are counted in the report, as in training."""
    report = SkipReport(path)
    out = []
    for p in pairs:
        if src.encode(p.src) and tgt.encode(p.tgt):
            out.append(p)
        else:
            report.skip(EMPTY, p.line)
    report.kept = len(out)
    return out, report


def read_corpus(path: str, fmt: str, src_col: str = "0", tgt_col: str = "1", header: bool = False,
                src_ext: str = "src", tgt_ext: str = "tgt") -> list[Pair]:
    """One data split: a TSV file (fmt="tsv") or the pair of files PATH.src_ext / PATH.tgt_ext (fmt="text")."""
    return list(iter_corpus(path, fmt, src_col, tgt_col, header, src_ext, tgt_ext))


def iter_corpus(path: str, fmt: str, src_col: str = "0", tgt_col: str = "1", header: bool = False,
                src_ext: str = "src", tgt_ext: str = "tgt") -> Iterator[Pair]:
    """read_corpus, one pair at a time."""
    if fmt == "tsv":
        return iter_tsv(path, src_col, tgt_col, header)
    return iter_text_pair(f"{path}.{src_ext}", f"{path}.{tgt_ext}")
