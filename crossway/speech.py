"""Speech in, text out: transcription and speech translation with any speech run (`model.arch: whisper` or
`las`), long audio in windows, Whisper's guard against repetition loops, and scoring against a manifest.

`transcribe` decodes every window of every file in one `crossway.translate` call (batched by the source codec's
cost; openai-whisper decodes one file at a time), through `Prompted(model, <|en|> <|transcribe|>
<|notimestamps|>)` or the translate prompt. Audio longer than the model's window (AudioFormat.max_seconds, 30 s)
is cut into windows at the quietest 100 ms within the window's last 5 seconds, so a cut rarely splits a word;
the windows' texts are joined with spaces. Whisper's special tokens are never produced (their logits are masked).

The guard is Whisper's temperature fallback (Radford et al. 2022, section 4.5): a window's output fails when its
gzip compression ratio is over 2.4 (a repetition loop), its mean log-probability per token is under -1, or the
length limit stopped it; failed windows are decoded again, one at a time (so a window's output never depends on
the others), by seeded sampling at temperatures 0.2, 0.4, ... 1.0, and the first output that passes is kept (if
none passes, the one the model finds most probable per token, scored without temperature).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from crossway.data.audio import SAMPLE_RATE, AudioFormat, load_audio
from crossway.data.speech import prompt_ids, read_speech, special_ids
from crossway.data.tokenizers import TextCodec
from crossway.decoding import DecodeConfig
from crossway.decoding.score import sequence_scores
from crossway.inference import Translation, translate
from crossway.metrics import sacrebleu_available, sacrebleu_scores, speech_error_rates
from crossway.models.prompted import Prompted

COMPRESSION_RATIO_LIMIT = 2.4  # gzip ratio above which an output is a repetition loop
LOGPROB_LIMIT = -1.0  # mean log-probability per token (eos included) below which an output is not trusted
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
CUT_SEARCH_SECONDS = 5.0  # a long file's window ends at the quietest 100 ms in its last 5 seconds
CUT_FRAME = SAMPLE_RATE // 10


@dataclass
class Window:
    start: float  # seconds
    end: float
    text: str
    mean_logprob: float
    compression_ratio: float
    temperature: float  # 0 = the requested search; > 0 = a fallback sample
    decodes: int  # 1, or 1 + the fallback samples drawn
    output: Translation


@dataclass
class Transcript:
    text: str
    windows: list[Window] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.windows[-1].end if self.windows else 0.0


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def mean_logprob(t: Translation) -> float:
    return t.score / max(1, len(t.tokens) + t.finished)


def _fails(t: Translation) -> bool:
    return (not t.finished or compression_ratio(t.text) > COMPRESSION_RATIO_LIMIT
            or mean_logprob(t) < LOGPROB_LIMIT)


def cut_windows(wave: Tensor, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) samples of windows of at most max_seconds covering wave (N,), each cut at the quietest
    100 ms of its last CUT_SEARCH_SECONDS (its second half, when shorter), the latest of equally quiet ones."""
    limit, n, out, start = int(max_seconds * SAMPLE_RATE), wave.numel(), [], 0
    hop = CUT_FRAME // 2
    while n - start > limit:
        lo = start + max(limit // 2, limit - int(CUT_SEARCH_SECONDS * SAMPLE_RATE))
        energy = wave[lo: start + limit].unfold(0, CUT_FRAME, hop).pow(2).mean(1)  # per 100 ms, every 50 ms
        last_quietest = energy.numel() - 1 - int(energy.flip(0).argmin())
        end = lo + last_quietest * hop + hop
        out.append((start, end))
        start = end
    out.append((start, n))
    return out


def transcribe(model: nn.Module, fmt: AudioFormat, tgt: TextCodec, audios: Sequence, cfg: DecodeConfig,
               task: str = "transcribe", language: str = "en", fallback: bool = True,
               names: Sequence[str] | None = None) -> list[Transcript]:
    """One transcript (or translation, task="translate") per input: an audio file, its bytes, a (N,) waveform at
    16 kHz, or (T, F) features of at most one window. Windows of all inputs are decoded together."""
    prompted = Prompted(model, prompt_ids(tgt, language, task), suppress=special_ids(tgt))
    items, spans = [], []  # every window's source, and (input, start s, end s)
    for k, audio in enumerate(audios):
        name = names[k] if names else ""
        if isinstance(audio, Tensor) and audio.dim() == 2:  # features: one window
            items.append(fmt.encode(audio, name))
            spans.append((k, 0.0, audio.size(0) / 100))
            continue
        wave = audio if isinstance(audio, Tensor) else load_audio(audio, name)
        for s, e in cut_windows(wave, fmt.max_seconds):
            items.append(fmt.features(wave[s:e], name or "audio data"))
            spans.append((k, s / SAMPLE_RATE, e / SAMPLE_RATE))
    outs = translate(prompted, fmt, tgt, items, cfg)
    tries = [[(0.0, o)] for o in outs]  # per window: (temperature, output) of every decode
    if fallback:
        for temp in FALLBACK_TEMPERATURES:
            redo = [i for i, t in enumerate(tries) if _fails(t[-1][1])]
            if not redo:
                break
            sampled = dataclasses.replace(cfg, strategy="sample", temperature=temp, top_k=0, top_p=1.0, n_best=1,
                                          seed=cfg.seed + int(temp * 10))
            for i in redo:  # one window at a time: a sample must not depend on which other windows failed
                tries[i].append((temp, translate(prompted, fmt, tgt, [items[i]], sampled)[0]))
    chosen = [_choose(prompted, fmt, tgt, items[i], t, cfg.max_tokens) for i, t in enumerate(tries)]
    result = [Transcript("") for _ in audios]
    for (k, s, e), (temp, o), t in zip(spans, chosen, tries, strict=True):
        result[k].windows.append(Window(s, e, o.text, mean_logprob(o), compression_ratio(o.text), temp, len(t), o))
    for r in result:
        r.text = " ".join(w.text for w in r.windows if w.text)
    return result


def _choose(model: nn.Module, fmt: AudioFormat, tgt: TextCodec, item: Tensor, tries: list[tuple[float, Translation]],
            max_tokens: int) -> tuple[float, Translation]:
    """The first output that passes; when none does, the one the model itself (without temperature) finds most
    probable per token, eos included."""
    passing = [t for t in tries if not _fails(t[1])]
    if passing or len(tries) == 1:
        return (passing or tries)[0]
    scores = sequence_scores(model, [(item, tgt.vocab.encode(o.tokens)) for _, o in tries], max_tokens, fmt)
    return max(zip(tries, scores, strict=True), key=lambda ts: ts[1] / (len(ts[0][1].tokens) + 1))[0]


def score_speech(model: nn.Module, fmt: AudioFormat, tgt: TextCodec, data, cfg: DecodeConfig, tasks: Sequence[str],
                 language: str, fallback: bool = False) -> dict:
    """Decode every utterance of a split (its features) for each task and score: WER / CER after
    normalize_english for transcribe, BLEU / chrF (sacrebleu, when installed) for translate -> {"metrics",
    "outputs"}; with both tasks, translation metrics are named bleu, chrf and transcription ones wer, cer."""
    metrics: dict[str, float] = {}
    rows = [{"audio": u.audio, "where": u.where} for u in data.utterances]
    feats = [f.float() for f in data.feats]
    for task in tasks:
        outs = transcribe(model, fmt, tgt, feats, cfg, task, language, fallback)
        hyps, refs = [o.text for o in outs], data.references(task)
        if task == "transcribe":
            metrics.update(speech_error_rates(hyps, refs))
        elif sacrebleu_available():
            scores = sacrebleu_scores(hyps, [[r] for r in refs])
            metrics.update({k: v for k, v in scores.items() if k in ("bleu", "chrf")})
        for row, o, r in zip(rows, outs, refs, strict=True):
            row[task] = {"output": o.text, "reference": r, "mean_logprob": o.windows[0].mean_logprob}
    return {"metrics": metrics, "outputs": rows}


def evaluate_speech(loaded, path: str, cfg: DecodeConfig, tasks: Sequence[str] | None = None,
                    report: str | Path | None = None, fallback: bool = True) -> dict:
    """Score a loaded speech run on a manifest (its tasks by default), decoded as `transcribe` decodes (with the
    temperature fallback unless fallback=False); with `report`, write the full JSON report there. -> {"metrics",
    "outputs", ...}."""
    d = loaded.config.data
    tasks = list(tasks or d.task_list())
    data = read_speech(path, dataclasses.replace(d, tasks=",".join(tasks)), loaded.src)
    result = {"data": path, "tasks": tasks, "decode": cfg.__dict__, "fallback": fallback,
              **score_speech(loaded.model, loaded.src, loaded.tgt, data, cfg, tasks, d.language, fallback)}
    if report:
        Path(report).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result
