"""The generated speech set: manifests in the exact format, 16 kHz FLAC files, texts and voices (accents and
variants) disjoint across splits, what was left out counted, the same bytes for the same seed whatever the number
of workers, translations carried through, noise at the drawn SNR, and errors naming the file and line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from crossway.data.speechgen import SNR_DB, add_noise, generate_speech, read_utterances
from crossway.errors import DataError

COUNTS = {"train": 6, "valid": 2, "test": 2}
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH (Debian: "
                                                                            "apt-get install espeak-ng)")
WORDS = ["river", "stone", "the", "of", "light", "seven", "north", "quiet", "bread", "walls", "morning", "garden"]


def _lines(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) + f" {i}" for i in range(n)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict]:
    """12 distinct lines (one with folded whitespace), plus 2 blank lines, a repeat and a line of 21 words."""
    tmp = tmp_path_factory.mktemp("speech")
    lines = _lines(12)
    lines[3] = "  the   river\tof light  "
    lines[5:5] = ["", "   ", lines[0], " ".join(["word"] * 21)]
    text = tmp / "text.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp / "out"
    return text, out, generate_speech(out, text, *COUNTS.values(), seed=3, workers=2)


def _manifest(path: Path) -> list[list[str]]:
    raw = path.read_text(encoding="utf-8")
    assert raw.endswith("\n") and "\r" not in raw
    return [line.split("\t") for line in raw.splitlines()]


@needs_espeak
def test_manifests_and_audio(corpus):
    text, out, stats = corpus
    spoken = {" ".join(line.split()) for line in text.read_text(encoding="utf-8").splitlines()}
    for split, n in COUNTS.items():
        rows = _manifest(out / f"{split}.tsv")
        assert rows[0] == ["audio", "text"] and len(rows) == n + 1
        for audio, sentence in rows[1:]:
            assert re.fullmatch(rf"audio/{split}/\d{{6}}\.flac", audio)
            assert sentence in spoken and sentence == " ".join(sentence.split()) and sentence
            info = soundfile.info(out / audio)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert 0.2 < info.duration < 10
        assert stats["splits"][split]["utterances"] == n
    assert "the river of light" in {r[1] for s in COUNTS for r in _manifest(out / f"{s}.tsv")[1:]}
    assert stats["skipped"] == {"blank lines": 2, "repeated texts": 1, "over 20 words": 1}
    assert 0 < stats["hours"] * 3600 < 10 * sum(COUNTS.values())


@needs_espeak
def test_texts_and_voices_are_disjoint(corpus):
    _, out, _ = corpus
    texts = {s: {r[1] for r in _manifest(out / f"{s}.tsv")[1:]} for s in COUNTS}
    voices = json.loads((out / "voices.json").read_text(encoding="utf-8"))
    assert set(voices) == set(COUNTS)
    accents = {s: {v.split("+")[0] for v in vs} for s, vs in voices.items()}
    variants = {s: {v.partition("+")[2] for v in vs} for s, vs in voices.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not texts[a] & texts[b]
        assert not accents[a] & accents[b] and not variants[a] & variants[b]
    assert all(v.startswith("gmw/") for vs in voices.values() for v in vs)
    assert len(accents["test"]) >= 2 and len(variants["test"]) >= 4 and len(voices["train"]) > 100


@needs_espeak
def test_same_seed_same_bytes_whatever_the_workers(corpus, tmp_path):
    text, out, _ = corpus
    generate_speech(tmp_path, text, *COUNTS.values(), seed=3, workers=1)
    assert _files(tmp_path) == _files(out)
    other = tmp_path / "other"
    generate_speech(other, text, *COUNTS.values(), seed=4, workers=2)
    assert (other / "train.tsv").read_bytes() == (out / "train.tsv").read_bytes()  # the texts do not follow the seed
    assert _files(other / "audio") != _files(out / "audio")


@needs_espeak
def test_translation_column(tmp_path):
    tsv = tmp_path / "bible.tsv"
    rows = [("ref", "en", "es")] + [(f"v{i}", f"line {w} {i}", f"línea  {i}") for i, w in enumerate(WORDS[:5])]
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    generate_speech(tmp_path / "out", tsv, 2, 1, 1, column="en", translation_column="es")
    pairs = {en: es for _, en, es in rows[1:]}
    for split in COUNTS:
        manifest = _manifest(tmp_path / "out" / f"{split}.tsv")
        assert manifest[0] == ["audio", "text", "translation"]
        for _, en, es in manifest[1:]:
            assert es == " ".join(pairs[en].split())


def test_errors_name_the_file_and_line(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("ref\ten\na\tone two\nb\tthree\textra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.tsv:1: no column named 'es'; the header has \['ref', 'en'\]"):
        read_utterances(tsv, "en", "es")
    with pytest.raises(DataError, match=r"t\.tsv:3: this line has 3 tab-separated fields, but the header"):
        read_utterances(tsv, "en")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        read_utterances(empty, "en")
    with pytest.raises(DataError, match=r"empty\.txt: no text to speak \(the file is empty\)"):
        read_utterances(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank\.txt: no text to speak \(blank lines 2\)"):
        read_utterances(blank)
    few = tmp_path / "few.txt"
    few.write_text("one\ntwo\ntwo\nthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"few\.txt: 3 distinct texts to speak \(left out: 1 repeated texts\), but "
                                        r"6 \+ 2 \+ 2 = 10 are asked for"):
        generate_speech(tmp_path / "out", few, 6, 2, 2)
    with pytest.raises(ValueError, match="translation_column needs column"):
        generate_speech(tmp_path / "out", few, 1, 1, 1, translation_column="es")


def test_noise_at_the_drawn_snr():
    wave = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3  # (N,) 1 s
    kinds = set()
    for i in range(40):
        noisy, kind, snr = add_noise(wave, np.random.default_rng(i))
        kinds.add(kind)
        assert noisy.dtype == np.float32 and noisy.shape == wave.shape
        if kind == "clean":
            assert snr is None and np.array_equal(noisy, wave)
            continue
        assert SNR_DB[0] <= snr <= SNR_DB[1]
        noise = (noisy - wave).astype(np.float64)
        assert abs(10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise ** 2)) - snr) < 0.01
        power = np.abs(np.fft.rfft(noise)) ** 2  # (8001,): 1 Hz bins
        low_to_high = power[1:500].mean() / power[2000:].mean()
        assert low_to_high > 10 if kind == "pink" else 0.5 < low_to_high < 2  # pink: power 1/f; white: flat
    assert kinds == {"clean", "white", "pink"}


@needs_espeak
def test_cli(tmp_path, capsys):
    from crossway.cli import main

    text = tmp_path / "t.txt"
    text.write_text("\n".join(_lines(4)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["data", "speech", str(out), "--text", str(text), "--train", "2", "--valid", "0", "--test", "1",
                 "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "train 2 utterances" in captured.out and "test 1 utterances" in captured.out
    assert "train: 2/2 utterances" in captured.err
    assert sorted(p.name for p in out.glob("*.tsv")) == ["test.tsv", "train.tsv"]  # no header-only valid.tsv
    assert main(["data", "speech", str(out), "--text", str(text), "--column", "en"]) == 2
    assert "t.txt:1: no column named 'en'" in capsys.readouterr().err
    assert main(["data", "speech", str(out), "--text", str(text), "--workers", "0"]) == 2
