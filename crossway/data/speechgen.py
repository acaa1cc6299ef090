"""A generated speech-recognition data set: lines of a text file spoken by espeak-ng in many voices, with noise.

Text: a UTF-8 text file, one utterance a line; or, with `column` (and `translation_column`), a TSV file whose first
line names its columns (the Bible corpus: `column="en", translation_column="es"`). Whitespace is folded to single
spaces, so the transcript is exactly the spoken line and never holds a tab. Nothing is dropped silently; counted and
returned: blank lines, empty fields, lines holding control characters (espeak-ng reads text as a C string), lines of
more than `max_words` words (never cut), repeated texts (spoken once: the first translation is kept), audio longer
than `max_seconds` and silent audio.

Splits, held-out text: the distinct texts are ordered by the SHA-1 of their UTF-8 bytes; test takes the first
n_test, valid the next n_valid, train the next n_train. A sentence is therefore in one split only, and the test and
valid texts do not change with n_train or the seed. Fewer distinct texts than asked for is an error.

Splits, held-out voices: a voice is an eSpeak accent (the `gmw/...` English voices that speak here, named by their
file, e.g. `gmw/en-US`: the language name `en-gb` picks a different voice than `gmw/en`) with a voice variant
(`espeak-ng --voices=variant`, `-v gmw/en-US+Alex`) or none. The mbrola voices (`mb/...`) are not used: they need
the mbrola program, and variants do not change them. Test voices combine TEST_ACCENTS (Scottish and Caribbean
English) with TEST_VARIANTS, valid voices VALID_ACCENTS (New York City) with VALID_VARIANTS; train voices combine
every other accent with every other variant (and no variant). No accent and no variant is shared between splits, so
valid and test speakers and accents are unheard in training. DIR/voices.json lists each split's voices.

Each utterance draws from its own generator, seeded by (seed, split, index): a voice of its split, a speed
(SPEED, words per minute), a pitch (PITCH, espeak-ng's 0-99), then with probability CLEAN no noise, else white or
pink noise at an SNR uniform in SNR_DB against the power of the whole utterance. espeak-ng speaks the text read from
stdin, without its final pause (-z); "[[" is spoken as "[ [" (the brackets are silent either way) so that no text is
read as phoneme input. The 22.05 kHz audio is resampled to 16 kHz, nothing trimmed, scaled down to a peak of PEAK
only if it exceeds it, and written as 16-bit FLAC. The same text, arguments and espeak-ng give byte-identical files
whatever the number of workers.

Files: DIR/audio/{split}/{i:06d}.flac (a skipped utterance leaves its number unused), DIR/{train,valid,test}.tsv
(UTF-8: a header `audio<TAB>text`, or `audio<TAB>text<TAB>translation`, then one utterance a line, the audio path
relative to DIR) and DIR/voices.json ({split: [voice, ...]}).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from crossway.data.audio import SAMPLE_RATE, resample
from crossway.data.text import iter_lines
from crossway.errors import DataError

SPLITS = ("train", "valid", "test")
TEST_ACCENTS = ("gmw/en-GB-scotland", "gmw/en-029")
VALID_ACCENTS = ("gmw/en-US-nyc",)
TEST_VARIANTS = ("f3", "Annie", "steph2", "m4", "benjamin", "klatt3", "Gene2", "robosoft4")  # 3 female, 5 male
VALID_VARIANTS = ("f4", "belinda", "m5", "david", "klatt5", "robosoft6")  # 2 female, 4 male
SPEED = (130, 200)  # words per minute, inclusive
PITCH = (25, 75)  # espeak-ng -p, inclusive
CLEAN = 0.2  # probability of no noise
SNR_DB = (10.0, 40.0)
PEAK = 0.99  # louder audio is scaled down to this peak (full scale 1.0)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc (whitespace is folded before the check)
PROGRESS_EVERY = 500  # utterances between progress lines


@lru_cache(maxsize=1)
def espeak_voices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The English eSpeak voices (`gmw/...` files) that speak here, and the variant names, both sorted."""
    if shutil.which("espeak-ng") is None:
        raise DataError("espeak-ng is not on PATH; speech generation needs it (Debian: apt-get install espeak-ng)")
    listing = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    accents = tuple(v for v in sorted(set(re.findall(r"\s(gmw/\S+)", listing))) if _speak("test", v, 175, 50)[0].size)
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    variants = sorted(set(re.findall(r"\s!v/(.+?)\s*(?:\(.*\))?$", listing, re.MULTILINE)))
    return accents, tuple(variants)


def split_voices() -> dict[str, list[str]]:
    """Each split's voices, `accent` or `accent+variant` (see the module docstring), disjoint."""
    accents, variants = espeak_voices()
    held = {"test": (TEST_ACCENTS, TEST_VARIANTS), "valid": (VALID_ACCENTS, VALID_VARIANTS)}
    used_a = {a for s in held.values() for a in s[0]}
    used_v = {v for s in held.values() for v in s[1]}
    held["train"] = (tuple(a for a in accents if a not in used_a),
                     ("",) + tuple(v for v in variants if v not in used_v))  # "": the accent's own voice
    voices = {}
    for split in SPLITS:
        a_s, v_s = [a for a in held[split][0] if a in accents], [v for v in held[split][1] if v in variants + ("",)]
        if not a_s or not v_s:
            raise DataError(f"espeak-ng has none of the {split} accents {held[split][0]} or variants "
                            f"{held[split][1]} (found accents {accents})")
        voices[split] = [a + (f"+{v}" if v else "") for a in a_s for v in v_s]
    return voices


def _speak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's audio of `text`: (N,) float32 samples and their rate; (0,) if it spoke nothing."""
    import soundfile  # imported when audio is made, as crossway.data.audio does

    cmd = ["espeak-ng", "--stdout", "-z", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    r = subprocess.run(cmd, input=text.replace("[[", "[ [").encode("utf-8"), capture_output=True)
    if r.returncode != 0:
        raise DataError(f"{' '.join(cmd)} failed: {r.stderr.decode(errors='replace').strip()}")
    if not r.stdout:
        return np.zeros(0, np.float32), SAMPLE_RATE
    data, rate = soundfile.read(io.BytesIO(r.stdout), dtype="float32", always_2d=True)  # (N, 1)
    return data[:, 0], rate


def add_noise(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str, float | None]:
    """wave (N,) -> (wave plus noise (N,) float32, "clean" / "white" / "pink", SNR in dB or None)."""
    if rng.random() < CLEAN:
        return wave, "clean", None
    kind, snr = ("white", "pink")[int(rng.integers(2))], float(rng.uniform(*SNR_DB))
    n = wave.size
    if kind == "white":
        noise = rng.standard_normal(n)
    else:  # white noise shaped in frequency: amplitude 1/sqrt(f), power 1/f; a power-of-2 FFT (fast for any n)
        m = 1 << max(1, (n - 1).bit_length())
        spec = np.fft.rfft(rng.standard_normal(m))  # (m // 2 + 1,)
        spec[0] = 0.0
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        noise = np.fft.irfft(spec, m)[:n]
    speech_power = float(np.mean(wave.astype(np.float64) ** 2))
    noise *= np.sqrt(speech_power / 10 ** (snr / 10) / np.mean(noise ** 2))
    return (wave + noise).astype(np.float32), kind, snr


@dataclass(frozen=True)
class _Job:
    text: str
    out: Path
    name: str  # the audio file, relative to `out`
    key: tuple[int, int, int]  # (seed, split, index): the utterance's generator
    voices: tuple[str, ...]
    max_seconds: float


def _synthesize(job: _Job) -> tuple[float, str]:
    """Speak one utterance into its FLAC file: (seconds, "") or (0, the reason it was skipped)."""
    import soundfile

    rng = np.random.default_rng(job.key)
    voice = job.voices[int(rng.integers(len(job.voices)))]
    speed, pitch = int(rng.integers(SPEED[0], SPEED[1] + 1)), int(rng.integers(PITCH[0], PITCH[1] + 1))
    raw, rate = _speak(job.text, voice, speed, pitch)
    wave = resample(torch.from_numpy(raw), rate, SAMPLE_RATE).numpy()  # (N,) at 16 kHz
    seconds = wave.size / SAMPLE_RATE
    if seconds > job.max_seconds:
        return 0.0, "audio longer than max_seconds"
    if not np.any(wave):
        return 0.0, "silent audio (espeak-ng spoke nothing)"
    wave = add_noise(wave, rng)[0]
    peak = float(np.abs(wave).max())
    if peak > PEAK:
        wave = wave * np.float32(PEAK / peak)
    soundfile.write(job.out / job.name, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return seconds, ""


def read_utterances(path: str | Path, column: str | None = None, translation_column: str | None = None,
                    max_words: int = 20) -> tuple[dict[str, str | None], Counter]:
    """The distinct texts to speak -> their translation (None without translation_column), in file order, and
    what was left out, by reason. Plain text without `column`, else a TSV file with a header line."""
    path, skipped = Path(path), Counter()
    lines = enumerate(iter_lines(path), start=1)
    cols = None
    if column is not None:
        first = next(lines, None)
        if first is None or not first[1].strip():
            raise DataError(f"{path}{':1: the first line is blank' if first else ': the file is empty'}; expected a "
                            f"header line naming the columns (--column {column})")
        header = first[1].split("\t")
        for c in (column, translation_column):
            if c is not None and c not in header:
                raise DataError(f"{path}:1: no column named {c!r}; the header has {header}")
        cols = (header.index(column), header.index(translation_column) if translation_column else None, len(header))
    texts: dict[str, str | None] = {}
    for n, line in lines:
        if not line.strip():
            skipped["blank lines"] += 1
            continue
        text, translation = line, None
        if cols is not None:
            fields = line.split("\t")
            if len(fields) != cols[2]:
                raise DataError(f"{path}:{n}: this line has {len(fields)} tab-separated fields, but the header "
                                f"(line 1) has {cols[2]}")
            text, translation = fields[cols[0]], None if cols[1] is None else " ".join(fields[cols[1]].split())
        text = " ".join(text.split())
        if not text or translation == "":
            skipped["empty text or translation"] += 1
        elif CONTROL.search(text + (translation or "")):
            skipped["control characters"] += 1
        elif len(text.split()) > max_words:
            skipped[f"over {max_words} words"] += 1
        elif text in texts:
            skipped["repeated texts"] += 1
        else:
            texts[text] = translation
    if not texts:
        kinds = ", ".join(f"{k} {v}" for k, v in skipped.items()) or "the file is empty"
        raise DataError(f"{path}: no text to speak ({kinds})")
    return texts, skipped


def generate_speech(out_dir: str | Path, text: str | Path, n_train: int = 4000, n_valid: int = 200,
                    n_test: int = 200, *, column: str | None = None, translation_column: str | None = None,
                    max_words: int = 20, max_seconds: float = 20.0, workers: int = 2, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict:
    """Speak lines of the text file `text` into out_dir (see the module docstring); `log` gets progress lines.

    Returns {"splits": {split: {"tsv": path, "asked": n, "utterances": n written, "seconds": audio, "voices": n}},
    "skipped": {reason: count}, "hours": audio in all, "voices": path of voices.json, "seconds": wall time}. A split
    with 0 utterances asked is not written.
    """
    if min(n_train, n_valid, n_test) < 0 or max_words < 1 or max_seconds <= 0 or workers < 1 or seed < 0:
        raise ValueError(f"need counts >= 0, max_words >= 1, max_seconds > 0, workers >= 1 and seed >= 0; got "
                         f"counts {n_train}/{n_valid}/{n_test}, max_words={max_words}, max_seconds={max_seconds}, "
                         f"workers={workers}, seed={seed}")
    if translation_column is not None and column is None:
        raise ValueError("translation_column needs column (the text is then read from a TSV file with a header)")
    t0, log = time.perf_counter(), log or (lambda _: None)
    texts, skipped = read_utterances(text, column, translation_column, max_words)
    asked = dict(zip(SPLITS, (n_train, n_valid, n_test), strict=True))
    if len(texts) < sum(asked.values()):
        reasons = ", ".join(f"{v} {k}" for k, v in skipped.items()) or "none"
        raise DataError(f"{text}: {len(texts)} distinct texts to speak (left out: {reasons}), but "
                        f"{n_train} + {n_valid} + {n_test} = {sum(asked.values())} are asked for")
    ordered = sorted(texts, key=lambda t: hashlib.sha1(t.encode("utf-8")).digest())
    start = {"test": 0, "valid": n_test, "train": n_test + n_valid}
    voices, out, splits = split_voices(), Path(out_dir), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers are the parallelism; torch's threads made resampling 10x slower (2 cores)
    try:
        with ThreadPoolExecutor(workers) as pool:  # the work is in espeak-ng, numpy and torch, which release the GIL
            for k, split in enumerate(SPLITS):
                if not asked[split]:  # no header-only manifest
                    continue
                jobs = [_Job(t, out, f"audio/{split}/{i:06d}.flac", (seed, k, i), tuple(voices[split]), max_seconds)
                        for i, t in enumerate(ordered[start[split]: start[split] + asked[split]])]
                (out / "audio" / split).mkdir(parents=True, exist_ok=True)
                tsv = out / f"{split}.tsv"
                n, seconds = _write_split(pool, jobs, tsv, texts if translation_column else None, skipped, log, t0)
                splits[split] = {"tsv": str(tsv), "asked": asked[split], "utterances": n, "seconds": seconds,
                                 "voices": len(voices[split])}
    finally:
        torch.set_num_threads(threads)
    voices_json = out / "voices.json"
    voices_json.write_text(json.dumps(voices, indent=1) + "\n", encoding="utf-8")
    return {"splits": splits, "skipped": dict(skipped), "hours": sum(v["seconds"] for v in splits.values()) / 3600,
            "voices": str(voices_json), "seconds": time.perf_counter() - t0}


def _write_split(pool: ThreadPoolExecutor, jobs: list[_Job], tsv: Path, translations: dict[str, str] | None,
                 skipped: Counter, log: Callable[[str], None], t0: float) -> tuple[int, float]:
    """Synthesize the jobs of a split, write its manifest; (utterances written, seconds of audio)."""
    split = tsv.stem
    rows, seconds = ["audio\ttext" + ("\ttranslation" if translations else "") + "\n"], 0.0
    for i, (job, (sec, reason)) in enumerate(zip(jobs, pool.map(_synthesize, jobs), strict=True), start=1):
        if reason:
            skipped[reason] += 1
        else:
            rows.append("\t".join([job.name, job.text] + ([translations[job.text]] if translations else [])) + "\n")
            seconds += sec
        if i % PROGRESS_EVERY == 0 or i == len(jobs):
            log(f"{split}: {i}/{len(jobs)} utterances, {seconds / 3600:.2f} h of audio, "
                f"{time.perf_counter() - t0:.0f} s")
    tsv.write_text("".join(rows), encoding="utf-8")
    return len(rows) - 1, seconds
