"""The speech half of the server (crossway.server): `POST /v1/transcribe` and the engine behind it.

The request body is the audio file's bytes (WAV, FLAC, OGG: whatever libsndfile reads, by content); the task, the
language, the temperature fallback and the decoding options are query parameters. On the event loop the request
is checked from the file's header alone (soundfile.info: 413 over the declared duration limit, 422 if unreadable,
empty or too short), then its options against the server's limits. The worker thread takes every queued request
with the same options (up to max_batch_inputs files), decodes the files (crossway.data.audio.load_audio, as
`crossway transcribe` reads them) and transcribes them in one `crossway.transcribe` call, so concurrent uploads
share a model call and the queue holds only compressed bytes. A file that fails to decode there gets its own 422.

Greedy and beam search give a window the same output alone and in a merged call, and the temperature fallback
resamples a failing window alone (crossway.transcribe), so merging changes no output.

Attention is asked of the search only when a request wants it (`attention=true`: the Transformer decoder then
computes its weights explicitly, and keeps (T, L, H, M) per hypothesis), so such requests batch among themselves.
Each window's answer then has one row per output token (the end token's last when finished): its attention over
the window's memory positions, mean of layers and heads, each position `seconds_per_position` long; and the
answer has the audio's log-mel spectrogram, at most SPECTROGRAM_COLUMNS columns wide, 0-255, for the web page.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import soundfile
import torch
from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field
from torch import Tensor

from crossway.config import decode_overrides
from crossway.data.audio import FRAMES_PER_SECOND, MIN_SAMPLE_RATE, MIN_SAMPLES, SAMPLE_RATE, load_audio
from crossway.data.speech import prompt_ids
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError, DataError
from crossway.server import MIN_TIMEOUT_S, RequestError, ServeConfig, ServerState, check_task, load_run, no_rescorers
from crossway.server_caption import decode_options as caption_options
from crossway.server_segment import check_query, upload_openapi_errors
from crossway.speech import Transcript, transcribe
from crossway.training.checkpoint import LoadedModel

if TYPE_CHECKING:
    from crossway.config import RunConfig

AUDIO_TYPES = ("audio/wav", "audio/flac", "audio/ogg")  # documented; any audio/* is read, by content
OPTIONS = ("strategy", "beam_size", "length_penalty", "max_len_b")  # query parameters -> DecodeConfig
PARAMS = ("task", "language", "fallback", *OPTIONS, "attention", "timeout_s")
SPECTROGRAM_COLUMNS = 600  # the most time columns of the spectrogram sent with attention
WARM_UP_SECONDS = 1.0


class SpeechEngine:
    """A loaded speech run: audio bytes in, its transcript (or translation), windows and attention out."""

    task = "speech"

    def __init__(self, loaded: LoadedModel, name: str):
        check_task(loaded, self.task)
        self.loaded, self.name = loaded, name

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig(), weights: bool = True) -> SpeechEngine:  # noqa: B008
        """The model in `run` with `cfg`'s checkpoint choice, quantization and default decoding options."""
        no_rescorers(run, cfg, "speech")
        return cls(load_run(run, cfg, weights), Path(run).name)

    @classmethod
    def check_options(cls, run: str | Path, config: RunConfig, cfg: ServeConfig) -> None:
        """`serve`'s check before the server starts: rescorers, or a bad default decoding option."""
        no_rescorers(run, cfg, "speech")
        decode_overrides(config.decode, list(cfg.decode))

    def run_batch(self, jobs: list[SpeechJob], key) -> list[dict | RequestError]:
        """The batcher's model call: the files of requests that share a key (decoding options, task, language,
        fallback) in one transcribe call. A file that does not decode is its own 422 (returned, not raised: the
        batcher would hand a raised error to every request of the call)."""
        _, dcfg, task, language, fallback, _ = key
        out: list[dict | RequestError | None] = [None] * len(jobs)
        read = []
        for i, job in enumerate(jobs):
            try:
                read.append((i, self.read(job.body)))
            except DataError as e:
                out[i] = RequestError(422, "invalid_audio", str(e))
        if read:
            transcripts = self.transcribe([wave for _, wave in read], dcfg, task, language, fallback)
            for (i, wave), t in zip(read, transcripts, strict=True):
                out[i] = transcript_json(t, spectrogram(self.loaded.src.features(wave)) if dcfg.return_attention
                                         else None)
        return out  # type: ignore[return-value]

    @staticmethod
    def read(body: bytes) -> Tensor:
        """An audio file's bytes -> (N,) float32 samples at 16 kHz, as crossway.transcribe reads files."""
        wave = load_audio(body, "the request body")
        if wave.numel() < MIN_SAMPLES:
            raise DataError(f"the request body: {wave.numel()} samples at {SAMPLE_RATE} Hz is too short; at least "
                            f"{MIN_SAMPLES} are needed")
        return wave

    def transcribe(self, waves: list[Tensor], cfg: DecodeConfig, task: str, language: str,
                   fallback: bool) -> list[Transcript]:
        return transcribe(self.loaded.model, self.loaded.src, self.loaded.tgt, waves, cfg, task, language, fallback)

    def info(self) -> dict:
        cfg, src = self.loaded.config, self.loaded.src
        return {"name": self.name, "task": self.task, "arch": cfg.model.arch, "tasks": cfg.data.task_list(),
                "language": cfg.data.language, "n_mels": src.n_mels, "window_seconds": src.max_seconds,
                "sample_rate": SAMPLE_RATE, "tgt_tokenizer": cfg.data.tgt_tokenizer,
                "decode": dataclasses.asdict(cfg.decode)}

    def limits(self, cfg: ServeConfig) -> dict:
        return {"max_body_bytes": cfg.max_audio_bytes, "max_audio_seconds": cfg.max_audio_seconds,
                "content_types": [*AUDIO_TYPES, "audio/*"], "max_beam_size": cfg.max_beam_size,
                "max_output_tokens": cfg.max_output_tokens, "timeout_s": cfg.timeout_s}

    def warm_up(self) -> None:
        gen = torch.Generator().manual_seed(0)
        wave = 0.01 * torch.randn(int(WARM_UP_SECONDS * SAMPLE_RATE), generator=gen)  # (N,) quiet noise
        buf = io.BytesIO()
        soundfile.write(buf, wave.numpy(), SAMPLE_RATE, format="WAV")
        cfg = dataclasses.replace(self.loaded.config.decode, return_attention=True)
        d = self.loaded.config.data
        (out,) = self.run_batch([SpeechJob(body=buf.getvalue())], ("transcribe", cfg, d.task_list()[0], d.language,
                                                                   False, None))
        if isinstance(out, RequestError):
            raise DataError(f"the warm-up audio: {out.message}")


@dataclass(frozen=True, kw_only=True)
class SpeechJob:
    """One audio file to transcribe, as the worker thread gets it (the queue holds compressed bytes only)."""
    body: bytes


def transcript_json(t: Transcript, spec: dict | None) -> dict:
    """A transcript as the endpoint answers it (TranscribeResponse, less model, task, language, header and time);
    with `spec` (attention was asked for), each window's attention rows and the spectrogram."""
    windows = []
    for w in t.windows:
        o = w.output
        item = {"start": round(w.start, 4), "end": round(w.end, 4), "text": w.text,
                "mean_logprob": round(w.mean_logprob, 6), "compression_ratio": round(w.compression_ratio, 4),
                "temperature": w.temperature, "decodes": w.decodes, "tokens": o.tokens, "score": round(o.score, 6),
                "finished": o.finished}
        if spec is not None and o.attention is not None:
            att = o.attention if o.attention.dim() == 2 else o.attention.mean((1, 2))  # (T, M): layers, heads
            frames = round((w.end - w.start) * SAMPLE_RATE) // (SAMPLE_RATE // FRAMES_PER_SECOND)
            item["seconds_per_position"] = round(frames / att.size(-1) / FRAMES_PER_SECOND, 6)
            item["attention"] = att.double().mul(1e4).round().div(1e4).tolist()
        windows.append(item)
    out = {"text": t.text, "seconds": round(t.seconds, 4), "windows": windows}
    if spec is not None:
        out["spectrogram"] = spec
    return out


def spectrogram(feats: Tensor, columns: int = SPECTROGRAM_COLUMNS) -> dict:
    """(T, F) log-mel features -> at most `columns` columns, each the mean of k frames (the last one's fewer),
    scaled to 0-255 over the audio's own range."""
    T = feats.size(0)
    k = -(-T // columns)
    idx = torch.arange(T) // k  # (T,) the column of each frame
    cols = torch.zeros(int(idx[-1]) + 1, feats.size(1)).index_add_(0, idx, feats) / torch.bincount(idx)[:, None]
    lo, hi = cols.min(), cols.max()
    q = ((cols - lo) / (hi - lo).clamp(min=1e-6) * 255).round().to(torch.uint8)  # (C, F)
    return {"seconds_per_column": k / FRAMES_PER_SECOND, "values": q.tolist()}


# --- the response --------------------------------------------------------------------------------------------
class WindowOut(BaseModel):
    start: float = Field(description="seconds from the audio's start")
    end: float
    text: str
    mean_logprob: float = Field(description="the output's log-probability per token, the end token's included")
    compression_ratio: float = Field(description="gzip ratio of the text (over 2.4: a repetition loop)")
    temperature: float = Field(description="0: the requested search; > 0: the fallback sample that was kept")
    decodes: int = Field(description="1, or 1 + the fallback samples drawn")
    tokens: list[str]
    score: float = Field(description="sum of the tokens' log-probabilities (the end token's included)")
    finished: bool = Field(description="false when max_len_b (and the server's max_len_a) stopped the search")
    attention: list[list[float]] | None = Field(
        None, description="with attention=true: one row per token, then the end token's when finished; each row "
                          "is a distribution over the window's memory positions (mean of layers and heads)")
    seconds_per_position: float | None = Field(
        None, description="with attention=true: position m covers start + [m, m + 1) x seconds_per_position")


class Spectrogram(BaseModel):
    seconds_per_column: float = Field(description="column c covers [c, c + 1) x seconds_per_column (the last "
                                                  "one may be shorter)")
    values: list[list[int]] = Field(description="columns x mel bins (lowest first), the log-mel features "
                                                "averaged per column and scaled to 0-255")


class TranscribeResponse(BaseModel):
    model: str
    task: str = Field(description="transcribe or translate")
    language: str
    text: str = Field(description="the windows' texts joined with spaces")
    seconds: float = Field(description="the audio's duration")
    windows: list[WindowOut] = Field(description="audio longer than the model's window is cut at quiet moments")
    spectrogram: Spectrogram | None = Field(None, description="with attention=true")
    format: str = Field(description="the input's format as read from its header, e.g. WAV, FLAC, OGG")
    sample_rate: int = Field(description="the file's sample rate (resampled to 16 kHz)")
    channels: int = Field(description="the file's channels (averaged to mono)")
    time_ms: float = Field(description="time in the server, queue included")


# --- the endpoint ---------------------------------------------------------------------------------------------
TRANSCRIBE_DOC = """The request body is the audio file's bytes (curl --data-binary @talk.wav -H 'Content-Type:
audio/wav'); WAV, FLAC and OGG are read (by content), averaged to mono and resampled to 16 kHz as `crossway
transcribe` reads files. The answer equals `crossway.transcribe(model, src, tgt, [audio], cfg, task, language,
fallback)` with the server's decoding options and the request's overrides. Requests with equal options that arrive
together share one model call (the fallback's samples then depend on the windows that share it; fallback=false
does not). Limits (GET /v1/info): the body's bytes, the duration (checked from the header before decoding), the
beam size and max_len_b."""

AUDIO_BODY = {"requestBody": {"required": True, "description": "the audio file's bytes", "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in (*AUDIO_TYPES, "application/octet-stream")}}}

_RESPONSES = {200: {"model": TranscribeResponse, "description": "the transcript, its windows, and with "
                                                                "attention=true each token's attention over time"},
              **upload_openapi_errors(
                  e413="body_too_large (over max_audio_bytes, refused before it is read), or audio_too_long "
                       "(duration from the header over max_audio_seconds, refused before decoding)",
                  e415="unsupported_media_type: send the audio file's bytes as the body (audio/wav, audio/flac, "
                       "audio/ogg or application/octet-stream), not JSON or multipart",
                  e422="invalid_audio (empty body, unreadable, truncated or corrupt, 0 samples, sample rate under "
                       f"{MIN_SAMPLE_RATE} Hz), audio_too_short, unsupported_task, unsupported_language, "
                       "invalid_request (a query parameter), invalid_options, beam_too_large, output_too_long")}


def add_transcribe_route(app: FastAPI, state: ServerState, cfg: ServeConfig) -> None:
    """`POST /v1/transcribe` on `app` (crossway.server.create_app adds it to every server: other runs answer
    404)."""
    sample_ids = itertools.count()  # a server whose default is sampling never merges requests (seeded sampling)

    @app.post("/v1/transcribe", summary="Transcribe or translate speech (speech runs)", description=TRANSCRIBE_DOC,
              openapi_extra=AUDIO_BODY, response_model=None, responses=_RESPONSES)
    async def transcribe_route(
            request: Request,
            engine: Annotated[SpeechEngine, Depends(_speech_engine)],
            task: Literal["transcribe", "translate"] | None = Query(None, description="the decoder's task token "
                                                                    "(default: the run's first, info.tasks)"),
            language: str | None = Query(None, max_length=32, description="the spoken language's token, e.g. en "
                                         "(default: the run's, info.language)"),
            fallback: bool = Query(True, description="decode failing windows again by sampling at rising "
                                   "temperatures (Whisper's guard against repetition loops)"),
            strategy: Literal["greedy", "beam"] | None = Query(None, description="default: the server's"),
            beam_size: int | None = Query(None, ge=1, description="beam: hypotheses kept per step"),
            length_penalty: float | None = Query(None, ge=0, le=10, description="beam: GNMT alpha"),
            max_len_b: int | None = Query(None, ge=0, description="the most tokens per window (plus the server's "
                                          "max_len_a x memory positions; at most limits.max_output_tokens)"),
            attention: bool = Query(False, description="add each token's attention over time and the spectrogram"),
            timeout_s: float | None = Query(None, ge=MIN_TIMEOUT_S, description="deadline in seconds (at most the "
                                            "server's)")):
        state.inflight += 1
        try:
            t0 = time.perf_counter()
            check_query(request, PARAMS)
            _check_content_type(request)
            body = await request.body()
            header = audio_header(body, cfg.max_audio_seconds)
            task, language = _task_and_language(engine, task, language)
            dcfg = caption_options(engine, cfg, strategy=strategy, beam_size=beam_size, n_best=1,
                                   length_penalty=length_penalty, max_len_b=max_len_b)
            dcfg = dataclasses.replace(dcfg, return_attention=attention)
            timeout = min(timeout_s or cfg.timeout_s, cfg.timeout_s)
            key = ("transcribe", dcfg, task, language, fallback,
                   next(sample_ids) if dcfg.strategy == "sample" else None)
            out = (await state.submit([SpeechJob(body=body)], key, timeout))[0]
            if isinstance(out, RequestError):
                raise out
            return {"model": engine.name, "task": task, "language": language, **out, **header,
                    "time_ms": round(1000 * (time.perf_counter() - t0), 2)}
        finally:
            state.inflight -= 1


async def _speech_engine(request: Request) -> SpeechEngine:  # as crossway.server_text._text_engine: 503 or 404 first
    return request.app.state.crossway.ready_engine("speech")


def audio_header(body: bytes, max_seconds: float) -> dict:
    """The audio's format, sample rate and channels from its header alone: 413 over `max_seconds`, 422 if
    unreadable, empty or too short to transcribe."""
    if not body:
        raise RequestError(422, "invalid_audio", "empty body: send the audio file's bytes (WAV, FLAC or OGG) as the "
                                                 "request body")
    try:
        info = soundfile.info(io.BytesIO(body))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        why = getattr(e, "error_string", None) or str(e)
        raise RequestError(422, "invalid_audio", f"not a readable audio file ({why}); send WAV, FLAC or "
                                                 f"OGG") from None
    seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    if info.frames <= 0:
        raise RequestError(422, "invalid_audio", f"the audio is empty: its {info.format} header declares 0 samples")
    if info.samplerate < MIN_SAMPLE_RATE:
        raise RequestError(422, "invalid_audio", f"sample rate {info.samplerate} Hz is below {MIN_SAMPLE_RATE} Hz; "
                                                 f"speech models read {SAMPLE_RATE} Hz", limit=MIN_SAMPLE_RATE)
    if seconds > max_seconds:
        raise RequestError(413, "audio_too_long", f"the audio lasts {seconds:.1f} s (from its header), over this "
                           f"server's limit of max_audio_seconds={max_seconds:g} s", limit=max_seconds,
                           seconds=round(seconds, 3))
    if math.ceil(seconds * SAMPLE_RATE) < MIN_SAMPLES:
        raise RequestError(422, "audio_too_short", f"the audio lasts {1000 * seconds:.1f} ms; at least "
                           f"{1000 * MIN_SAMPLES / SAMPLE_RATE:.1f} ms are needed",
                           limit=MIN_SAMPLES / SAMPLE_RATE)
    return {"format": info.format, "sample_rate": info.samplerate, "channels": info.channels}


def _check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith("audio/") and ctype != "application/octet-stream":
        how = "multipart uploads are not read" if ctype.startswith("multipart/") else f"{ctype} is not an audio type"
        raise RequestError(415, "unsupported_media_type", f"{how}: send the audio file's bytes as the body with "
                           f"Content-Type audio/wav, audio/flac, audio/ogg or application/octet-stream (e.g. curl "
                           f"--data-binary @talk.wav -H 'Content-Type: audio/wav' URL)", content_type=ctype)


def _task_and_language(engine: SpeechEngine, task: str | None, language: str | None) -> tuple[str, str]:
    """The request's task (one the run was trained for) and language (one whose token the vocabulary has)."""
    d = engine.loaded.config.data
    task, language = task or d.task_list()[0], language or d.language
    if task not in d.task_list():
        raise RequestError(422, "unsupported_task", f"task={task}: {engine.name} was trained to "
                           f"{' and '.join(d.task_list())} (data.tasks)", field="task")
    try:
        prompt_ids(engine.loaded.tgt, language, task)
    except ConfigError as e:
        raise RequestError(422, "unsupported_language", f"language={language}: {e}", field="language") from None
    return task, language
