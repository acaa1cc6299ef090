"""Speech data: the `data` section of `task: speech`, the manifest reader, and the checked utterances in memory
(log-mel features computed once, kept as float16; targets encoded with the task prompt).

A manifest is a UTF-8 TSV with a header line `audio<TAB>text` or `audio<TAB>text<TAB>translation` and one
utterance per line; `audio` is a path relative to the manifest's folder (or absolute). Every problem is a
DataError naming the manifest's file and line: a missing column, a missing, unreadable, empty or over-long audio
file, a sample rate other than 16 kHz when data.resample is off, an empty text or translation. `crossway data
speech` writes such manifests (crossway.data.speechgen).

Each utterance gives one training example per task in data.tasks: the transcript after the prompt
`<|en|> <|transcribe|> <|notimestamps|>`, and, when the manifest has translations, the translation after
`<|en|> <|translate|> <|notimestamps|>` (the language token names the spoken language, as in Whisper). A target
over max_tgt_len tokens is left out of training and counted, never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from crossway.data.audio import SAMPLE_RATE, AudioFormat, audio_seconds, load_audio
from crossway.data.text import SkipReport, read_lines
from crossway.data.tokenizers import SPECIALS, TextCodec, Vocab, make_tokenizer
from crossway.errors import ConfigError, DataError

SPEECH_TASKS = ("transcribe", "translate")
NO_TIMESTAMPS = "<|notimestamps|>"


def task_tokens(languages: tuple[str, ...] = ("en",)) -> list[str]:
    """Whisper's special tokens that a speech vocabulary reserves (bos is <|startoftranscript|>)."""
    return [*(f"<|{lang}|>" for lang in languages), "<|transcribe|>", "<|translate|>", NO_TIMESTAMPS]


def prompt_tokens(language: str, task: str) -> list[str]:
    """The decoder prompt after bos: `<|en|> <|transcribe|> <|notimestamps|>`."""
    if task not in SPEECH_TASKS:
        raise ConfigError(f"speech task {task!r}: one of {', '.join(SPEECH_TASKS)}")
    return [f"<|{language}|>", f"<|{task}|>", NO_TIMESTAMPS]


PROMPT_LENGTH = len(prompt_tokens("en", "transcribe"))


def special_ids(tgt: TextCodec) -> list[int]:
    """The ids of every Whisper special token in a target vocabulary (`<|...|>`): read in prompts, never output."""
    return [i for t, i in tgt.vocab.stoi.items() if t.startswith("<|") and t.endswith("|>")]


def prompt_ids(tgt: TextCodec, language: str, task: str) -> list[int]:
    missing = [t for t in prompt_tokens(language, task) if t not in tgt.vocab.stoi]
    if missing:
        raise ConfigError(f"the model's vocabulary has no {' '.join(missing)}: it was not trained to {task} "
                          f"{language} speech")
    return [tgt.vocab.stoi[t] for t in prompt_tokens(language, task)]


@dataclass(frozen=True, kw_only=True)
class SpeechDataConfig:
    train: str = ""  # manifests: audio<TAB>text[<TAB>translation] with a header line
    valid: str = ""
    test: str = ""
    language: str = "en"  # the spoken language: the prompt's language token
    tasks: str = "transcribe"  # comma-separated: transcribe, translate (needs a translation column)
    n_mels: int = 80
    max_seconds: float = 30.0  # longer utterances are errors (training and evaluation); transcribe windows
    resample: bool = True  # other sample rates are resampled to 16 kHz; false: they are errors
    tgt_tokenizer: str = "char"  # char | word
    lowercase: bool = False
    min_freq: int = 1
    max_tgt_len: int = 400  # longer targets are left out of training, and counted
    max_frames: int = 20_000  # padded frames per batch (100 per second of audio)
    spec_augment: bool = True  # SpecAugment masks on training features (seeded per epoch and utterance)
    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 2
    time_width: float = 0.05  # a time mask spans up to this fraction of the utterance
    vocab: str = ""  # reuse the target vocabulary of this run, checkpoint or vocab.json

    def __post_init__(self):
        for name in ("n_mels", "min_freq", "max_tgt_len", "max_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seconds <= 0 or self.max_frames < self.max_seconds * 100:
            raise ConfigError(f"data.max_seconds must be > 0 and data.max_frames ({self.max_frames}) must hold one "
                              f"utterance of max_seconds ({self.max_seconds} s = {self.max_seconds * 100:g} frames)")
        if self.tgt_tokenizer not in ("char", "word"):
            raise ConfigError(f"data.tgt_tokenizer must be char or word, not {self.tgt_tokenizer!r}")
        bad = [t for t in self.task_list() if t not in SPEECH_TASKS]
        if bad or not self.task_list():
            raise ConfigError(f"data.tasks={self.tasks!r}: a comma-separated list of {', '.join(SPEECH_TASKS)}")
        if min(self.freq_masks, self.freq_width, self.time_masks) < 0 or not 0 <= self.time_width < 1:
            raise ConfigError("data.freq_masks, freq_width and time_masks must be >= 0 and time_width in [0, 1)")

    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def audio_format(self) -> AudioFormat:
        return AudioFormat(self.n_mels, self.max_seconds)


@dataclass
class Utterance:
    audio: str  # the file, as resolved
    text: str
    translation: str | None
    where: str  # manifest:line


@dataclass
class SpeechSet:
    """One split in memory: features (T, F) float16 per utterance, references, and (utterance, task, target
    ids, where) training pairs once the target codec is known."""

    path: str
    utterances: list[Utterance]
    feats: list[Tensor]
    pairs: list[tuple[int, str, list[int], str]] = field(default_factory=list)

    def references(self, task: str) -> list[str]:
        return [u.text if task == "transcribe" else (u.translation or "") for u in self.utterances]


def read_manifest(path: str | Path, max_seconds: float | None = None) -> list[Utterance]:
    """Read and check a manifest (without decoding audio; durations from the headers)."""
    lines = read_lines(path)
    if not lines:
        raise DataError(f"{path}: empty manifest (expected a header line audio<TAB>text[<TAB>translation])")
    header = lines[0].rstrip("\r").split("\t")
    if header[:2] != ["audio", "text"] or len(header) > 3 or (len(header) == 3 and header[2] != "translation"):
        raise DataError(f"{path}:1: the header must be audio<TAB>text or audio<TAB>text<TAB>translation, got "
                        f"{'<TAB>'.join(header)!r}")
    base, cols, out = Path(path).parent, len(header), []
    for n, line in enumerate(lines[1:], start=2):
        where = f"{path}:{n}"
        fields = line.rstrip("\r").split("\t")
        if len(fields) != cols:
            raise DataError(f"{where}: {len(fields)} fields, the header has {cols} ({'<TAB>'.join(header)})")
        audio, text = fields[0].strip(), " ".join(fields[1].split())
        translation = " ".join(fields[2].split()) if cols == 3 else None
        if not audio:
            raise DataError(f"{where}: the audio field is empty")
        if not text:
            raise DataError(f"{where}: the text field is empty")
        if translation is not None and not translation:
            raise DataError(f"{where}: the translation field is empty")
        file = Path(audio) if Path(audio).is_absolute() else base / audio
        if not file.is_file():
            raise DataError(f"{where}: audio file {file} does not exist")
        seconds = audio_seconds(file, f"{where}: {file}")
        if seconds == 0:
            raise DataError(f"{where}: audio file {file} is empty (0 samples)")
        if max_seconds is not None and seconds > max_seconds:
            raise DataError(f"{where}: audio file {file} lasts {seconds:.1f} s, over data.max_seconds={max_seconds:g}")
        out.append(Utterance(str(file), text, translation, where))
    if not out:
        raise DataError(f"{path}: no utterances after the header")
    return out


def read_speech(path: str, d: SpeechDataConfig, fmt: AudioFormat) -> SpeechSet:
    """A manifest's utterances with their features computed (each file decoded once)."""
    utts = read_manifest(path, d.max_seconds)
    if "translate" in d.task_list() and utts[0].translation is None:
        raise DataError(f"{path}:1: data.tasks includes translate, but the manifest has no translation column")
    feats = []
    for u in utts:
        wave = load_audio(u.audio, f"{u.where}: {u.audio}", SAMPLE_RATE if d.resample else None)
        feats.append(fmt.features(wave, f"{u.where}: {u.audio}").half())
    return SpeechSet(path, utts, feats)


def build_target_codec(d: SpeechDataConfig, data: SpeechSet) -> TextCodec:
    """Characters (or words) of every target the training split has, after Whisper's task tokens."""
    tok = make_tokenizer(d.tgt_tokenizer, d.lowercase)
    texts = [t for task in d.task_list() for t in data.references(task)]
    learned = Vocab.build((tok.tokenize(t) for t in texts), d.min_freq).itos[len(SPECIALS):]
    return TextCodec(tok, Vocab([*task_tokens((d.language,)), *learned]))


def encode_targets(data: SpeechSet, d: SpeechDataConfig, tgt: TextCodec, report: SkipReport) -> None:
    """Fill data.pairs: (utterance, task, prompt + target ids, where) for each task and utterance kept."""
    for task in d.task_list():
        prompt = prompt_ids(tgt, d.language, task)
        for i, (u, ref) in enumerate(zip(data.utterances, data.references(task), strict=True)):
            ids = tgt.encode(ref)
            if not ids:
                report.skip("no target tokens", u.where)
            elif len(ids) > d.max_tgt_len:
                report.skip(f"over {d.max_tgt_len} target tokens", u.where)
            else:
                data.pairs.append((i, task, [*prompt, *ids], u.where))
                report.kept += 1
