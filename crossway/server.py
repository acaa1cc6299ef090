"""HTTP serving: `POST /v1/translate` (text runs) or `POST /v1/segment` (segmentation runs), health probes, the
web page at `/`, and the limits that keep it up.

    serve("runs/g2p-rnn", ServeConfig(port=8000))      # what `crossway serve --model runs/g2p-rnn` calls

A server loads one run; its task (the run's `task`) picks the engine (ENGINES) and the endpoint that answers:
the other one is a 404 `wrong_task` naming the right one, and `/v1/info` says the task, so the page shows its tab.

Request flow: body-size guard (413 before the body is read; images have their own limit) -> JSON schema or
query parameters (422) -> limits on inputs, tokens and decoding options, or on an image's declared pixels
(413, read from its header before anything is decoded) and tiling (422 naming the limit) -> the micro-batcher's
bounded queue (429 at once when full) -> one model call for requests that arrived together (texts; an image is
a call of its own, decoded on the worker thread so the queue holds only compressed bytes) -> response, or 504
at the request's deadline (its queue slot is freed). `/health/ready` is 503 until the model is loaded and a
warm-up decode or segmentation has run, 200 while serving, and 503 again once SIGTERM starts the drain: new
requests are refused with 503, requests in flight finish, then the server exits.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from crossway import __version__
from crossway.batcher import DeadlineExceeded, MicroBatcher, QueueFull
from crossway.config import decode_overrides
from crossway.data.images import _DECODE_ERRORS, IMAGE_MODES
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError, CrosswayError
from crossway.inference import Translation, set_threads, translate
from crossway.quantize import QUANTIZE, quantize
from crossway.rerank import Rescorer, check_rerank, load_rescorer
from crossway.segment import PALETTE, TileConfig, gate_maps, overlay, segment_image
from crossway.training.checkpoint import LoadedModel, load_checkpoint, load_config

log = logging.getLogger("crossway.server")
MIN_TILE = 64  # smallest tile a request may ask for; with overlap <= tile / 2 tiles cover a pixel at most 4 times
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp")  # what POST /v1/segment reads, by content
IMAGE_ALIASES = ("image/jpg", "image/tif", "image/x-ms-bmp", "image/x-bmp", "application/octet-stream")
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # the only decoders Pillow may try (EPS, say, runs Ghostscript)
PNG_LEVEL = 1  # zlib level of the PNGs the server writes: speed first (level 6 took 2x as long on a 3-Mpixel image)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_000_000  # 413 above this, before the body is read
    max_inputs: int = 64  # inputs per request
    max_input_tokens: int = 0  # tokens per input; 0 = the model's data.max_src_len
    max_output_tokens: int = 512  # a * longest input + b may not exceed this (nor the model's positions)
    max_beam_size: int = 16
    max_queue: int = 64  # requests queued or decoding; 429 beyond
    max_batch_inputs: int = 64  # inputs per model call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    timeout_s: float = 30.0  # per-request deadline (a request may ask for less): 504 after it
    drain_timeout_s: float = 60.0  # SIGTERM: how long in-flight work may take before the server exits anyway
    threads: int = 0  # torch threads; 0 = torch's choice
    checkpoint: str = "best"
    quantize: str = "none"  # none | int8 (crossway.quantize)
    decode: tuple[str, ...] = ()  # "decode.key=value": the server's default decoding options (requests override)
    rescore: tuple[str, ...] = ()  # runs (or graphone models) that rerank every n-best list (crossway.rerank)
    rescore_weights: tuple[float, ...] | None = None  # the searching model's, then one per rescorer (default: 1s)
    # segmentation runs
    max_image_bytes: int = 20_000_000  # 413 above this (POST /v1/segment's body limit), before the body is read
    max_image_pixels: int = 16_777_216  # 413 above this declared width x height, before decoding (4096 x 4096)
    tile: int = 512  # the largest window segmented at once (memory): larger images go in tiles; 0 = whole images
    overlap: int = 32  # default overlap of neighbouring tiles (at most tile / 2)

    def __post_init__(self):
        for name in ("max_body_bytes", "max_inputs", "max_output_tokens", "max_beam_size", "max_queue",
                     "max_batch_inputs", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be >= 1, not {getattr(self, name)}")
        if self.tile and self.tile < MIN_TILE or self.tile < 0:
            raise ValueError(f"serve.tile must be 0 (whole images) or >= {MIN_TILE}, not {self.tile}")
        if self.overlap < 0 or self.tile and self.overlap > self.tile // 2:
            raise ValueError(f"serve.overlap must be between 0 and tile / 2 = {self.tile // 2}, not {self.overlap}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"serve.quantize must be one of {list(QUANTIZE)}, not {self.quantize!r}")
        if self.timeout_s <= 0 or self.batch_wait_ms < 0 or self.max_input_tokens < 0:
            raise ValueError("serve.timeout_s must be > 0, batch_wait_ms and max_input_tokens >= 0")
        if self.rescore_weights is not None and len(self.rescore_weights) != 1 + len(self.rescore):
            raise ValueError(f"serve.rescore_weights: {len(self.rescore_weights)} weights for "
                             f"{1 + len(self.rescore)} models (the searching model first, then each rescorer)")


class Engine:
    """A loaded text run and what the server needs to know about it."""

    task = "text"

    def __init__(self, loaded: LoadedModel, name: str, rescorers: Sequence[Rescorer] = (),
                 weights: Sequence[float] | None = None):
        """`rescorers` rerank every n-best list (weights: the searching model's, then one per rescorer), so the
        model's decoding options must give one (crossway.rerank.check_rerank), and so must every request's."""
        _check_task(loaded, self.task)
        check_rerank(loaded.config.decode, rescorers)
        self.loaded, self.name = loaded, name
        self.rescorers, self.weights = list(rescorers), None if weights is None else list(weights)
        cfg = loaded.config
        self.max_src_len = cfg.data.max_src_len
        self.max_positions = getattr(cfg.model, "max_positions", None)  # the Transformer's position table

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig()) -> Engine:
        """The model in `run` with `cfg`'s checkpoint choice, quantization, default decoding options and
        rescorers (loaded alike)."""

        def one(path):
            loaded = load_checkpoint(path, cfg.checkpoint)
            return dataclasses.replace(loaded, model=quantize(loaded.model, cfg.quantize))

        def rescorer(path):  # a run, quantized alike, or a graphone model (no weights to quantize)
            r = load_rescorer(path, cfg.checkpoint)
            return dataclasses.replace(r, model=quantize(r.model, cfg.quantize)) if isinstance(r, LoadedModel) else r

        loaded = one(run)
        if cfg.decode:
            config = dataclasses.replace(loaded.config, decode=decode_overrides(loaded.config.decode,
                                                                                list(cfg.decode)))
            loaded = dataclasses.replace(loaded, config=config)
        return cls(loaded, Path(run).name, [rescorer(r) for r in cfg.rescore], cfg.rescore_weights)

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.src.encode(text))

    def translate(self, texts: list[str], cfg: DecodeConfig) -> list[Translation]:
        return translate(self.loaded.model, self.loaded.src, self.loaded.tgt, texts, cfg,
                         rescorers=self.rescorers, weights=self.weights)

    def limits(self, cfg: ServeConfig) -> dict:
        return _limits(cfg, self)

    def info(self) -> dict:
        cfg = self.loaded.config
        out = {"name": self.name, "task": self.task, "arch": cfg.model.arch, "src_tokenizer": cfg.data.src_tokenizer,
               "tgt_tokenizer": cfg.data.tgt_tokenizer, "decode": dataclasses.asdict(cfg.decode),
               "attention": _attention_kind(cfg.model)}
        if self.rescorers:
            out["rescore"] = {"models": [str(r.path) for r in self.rescorers],
                              "weights": self.weights or [1.0] * (1 + len(self.rescorers))}
        return out

    def warm_up(self) -> None:
        sample = self.loaded.src.tokenizer.detokenize(self.loaded.src.vocab.itos[4:9])
        self.translate([sample], dataclasses.replace(self.loaded.config.decode, return_attention=True))


class SegmentEngine:
    """A loaded segmentation run: image bytes in, a class map (crossway.segment_image) and its PNGs out."""

    task = "segmentation"

    def __init__(self, loaded: LoadedModel, name: str, max_pixels: int = ServeConfig.max_image_pixels):
        _check_task(loaded, self.task)
        self.loaded, self.name, self.max_pixels = loaded, name, max_pixels
        self.gates = bool(getattr(loaded.config.model, "attention_gates", False))

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig()) -> SegmentEngine:
        _no_text_options(run, cfg)
        return cls(load_checkpoint(run, cfg.checkpoint), Path(run).name, cfg.max_image_pixels)

    def segment(self, job: SegmentJob) -> dict:
        """Runs on the batcher's worker thread: decode, segment, and write the PNGs the request asked for."""
        image, fmt = decode_image(job.body, self.loaded.src.channels, self.max_pixels)  # (C, H, W) uint8
        mask = segment_image(self.loaded.model, image, job.tiles)  # (H, W) class ids
        gates = gate_maps(self.loaded.model, image) if job.gates else []
        out = {"format": fmt, "width": image.shape[2], "height": image.shape[1], "mask_png": mask_png_bytes(mask)}
        if job.details:
            out["pixels"] = torch.bincount(mask.flatten(), minlength=self.loaded.tgt.size).tolist()
            out["overlay_png"] = _png(overlay(image, mask, job.alpha))
        if job.image:
            out["image_png"] = _png(image.permute(1, 2, 0).squeeze(2).numpy())  # as the model saw it
        if gates:  # fine to coarse, each upsampled to (H, W); 0-255 = gate values 0-1
            out["gates"] = [{"level": i, "downsample": 2 ** i, "min": round(float(g.min()), 4),
                             "mean": round(float(g.mean()), 4), "max": round(float(g.max()), 4),
                             "png": _png(g.mul(255).round().to(torch.uint8).numpy())} for i, g in enumerate(gates)]
        return out

    def info(self) -> dict:
        cfg = self.loaded.config
        return {"name": self.name, "task": self.task, "arch": cfg.model.arch, "channels": self.loaded.src.channels,
                "classes": [{"id": i, "name": n, "color": _hex(i)} for i, n in enumerate(self.loaded.tgt.names)],
                "gates": cfg.model.depth if self.gates else 0}

    def limits(self, cfg: ServeConfig) -> dict:
        return {"max_body_bytes": cfg.max_image_bytes, "max_image_pixels": cfg.max_image_pixels, "tile": cfg.tile,
                "overlap": cfg.overlap, "min_tile": MIN_TILE, "content_types": list(IMAGE_TYPES),
                "timeout_s": cfg.timeout_s}

    def warm_up(self) -> None:
        blank = np.zeros((64, 64) if self.loaded.src.channels == 1 else (64, 64, 3), np.uint8)
        self.segment(SegmentJob(body=_png(blank), tiles=TileConfig(), gates=self.gates, details=True, image=True))


@dataclass(frozen=True, kw_only=True)
class SegmentJob:
    """One image to segment, as the worker thread gets it."""
    body: bytes  # the encoded image (decoded on the worker: the queue holds compressed bytes only)
    tiles: TileConfig
    gates: bool = False  # also the attention gates' maps (a whole-image pass)
    details: bool = False  # also the per-class pixel counts and the overlay PNG
    image: bool = False  # also the image as the model saw it (converted to its channels), as a PNG
    alpha: float = 0.5  # the overlay's tint opacity


ENGINES = {"text": Engine, "segmentation": SegmentEngine}  # a run's task -> the engine that serves it
ENDPOINTS = {"text": "POST /v1/translate", "segmentation": "POST /v1/segment"}


def load_engine(run: str | Path, cfg: ServeConfig = ServeConfig()) -> Engine | SegmentEngine:
    """The engine of the run's task, loaded with `cfg`."""
    return ENGINES[load_config(run, cfg.checkpoint).task].load(run, cfg)


def _check_task(loaded: LoadedModel, task: str) -> None:
    if loaded.config.task != task:
        raise ConfigError(f"{loaded.path} is a {loaded.config.task} run; {ENGINES[task].__name__} serves {task} "
                          f"runs (load_engine picks the engine of a run's task)")


def _no_text_options(run, cfg: ServeConfig) -> None:
    """Options that only a text run can use are an error for a segmentation run, not silently ignored."""
    used = [name for name, on in (("decode.* options", cfg.decode), ("rescore", cfg.rescore),
                                   ("rescore weights", cfg.rescore_weights is not None),
                                   ("quantize", cfg.quantize != "none")) if on]
    if used:
        raise ConfigError(f"{run} is a segmentation run; these options are for text runs only: {', '.join(used)}")


def _attention_kind(model_cfg) -> dict:
    if model_cfg.arch == "transformer":
        return {"layers": model_cfg.dec_layers, "heads": model_cfg.heads}
    return {"layers": 0, "heads": 0} if getattr(model_cfg, "attention", "none") == "none" else \
        {"layers": 1, "heads": 1}


# --- images in and out ----------------------------------------------------------------------------------------
def open_image(body: bytes, max_pixels: int) -> Image.Image:
    """The image in `body` with only its header read: PNG, JPEG, TIFF or BMP (by content, whatever the request's
    Content-Type says), its declared width x height at most `max_pixels` (413 otherwise, before any pixel is
    decoded: a decompression bomb costs a header parse), anything unreadable a 422 naming the problem.
    (crossway.data.images._opened does the same for files.)"""
    if not body:
        raise RequestError(422, "invalid_image", "empty body: send the image's bytes (PNG, JPEG, TIFF or BMP) as "
                                                 "the request body")
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours (max_pixels) decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:  # over twice Pillow's limit, refused by Pillow itself
        raise RequestError(413, "image_too_large", f"the image declares too many pixels to decode safely (the limit "
                           f"is {max_pixels:,}); refused before decoding ({e})", limit=max_pixels) from None
    except _DECODE_ERRORS as e:  # Pillow reports a header it cannot parse as UnidentifiedImageError
        fmt = _format_of(body)
        what = (f"the body starts like a {fmt} image, but its header is truncated or corrupt ({len(body):,} bytes)"
                if fmt else f"not a PNG, JPEG, TIFF or BMP image ({len(body):,} bytes starting {body[:8]!r})")
        raise RequestError(422, "invalid_image", what if isinstance(e, UnidentifiedImageError) else
                           f"{what} ({e})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise RequestError(413, "image_too_large", f"the image declares {w}x{h} pixels (W x H, {w * h:,} in all), "
                           f"over the limit of {max_pixels:,}; refused before decoding", limit=max_pixels,
                           width=w, height=h)
    if w == 0 or h == 0:
        im.close()
        raise RequestError(422, "invalid_image", f"the image declares {w}x{h} pixels: nothing to segment")
    return im


def decode_image(body: bytes, channels: int, max_pixels: int) -> tuple[Tensor, str]:
    """`body` decoded to (C, H, W) uint8 with C = `channels`, as crossway.data.images.load_image converts a file
    (grayscale or RGB; alpha dropped; 8 bits per channel), and its format."""
    with open_image(body, max_pixels) as im:
        try:
            im.load()
        except _DECODE_ERRORS as e:
            raise RequestError(422, "invalid_image", f"truncated or corrupt {im.format} image ({e})") from None
        if im.mode not in IMAGE_MODES:
            raise RequestError(422, "unsupported_image", f"image mode {im.mode} is not supported (16-bit, 32-bit "
                               f"and float images are not); send 8-bit grayscale, RGB(A) or palette images")
        arr = np.array(im.convert("L" if channels == 1 else "RGB"))  # (H, W) or (H, W, 3)
        fmt = im.format
    arr = arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))  # (C, H, W)
    return torch.from_numpy(arr), fmt


def _format_of(body: bytes) -> str:
    """The format the first bytes announce ("" if none of the four)."""
    return next((f for f, magic in (("PNG", b"\x89PNG\r\n\x1a\n"), ("JPEG", b"\xff\xd8\xff"), ("BMP", b"BM"),
                                    ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*")) if body.startswith(magic)), "")


def _png(arr: np.ndarray, palette: bool = False) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes; with `palette`, (H, W) class ids shown in PALETTE's colours."""
    im = Image.fromarray(arr)
    if palette:  # an L image with a palette becomes mode P: the pixel values stay the class ids
        im.putpalette([v for i in range(256) for v in PALETTE[i % len(PALETTE)]])
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def mask_png_bytes(mask: Tensor) -> bytes:
    """A class map (H, W) as `crossway segment` writes it (crossway.segment.mask_png), in memory."""
    return _png(mask.to(torch.uint8).numpy(), palette=True)


def _hex(class_id: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*PALETTE[class_id % len(PALETTE)])


# --- request and response ---------------------------------------------------------------------------------
class DecodeOptions(BaseModel):
    """Overrides of the model's decoding options (see DecodeConfig); unset ones keep the model's values."""
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["greedy", "beam", "sample"] | None = None
    beam_size: int | None = Field(None, ge=1)
    n_best: int | None = Field(None, ge=1)
    length_penalty: float | None = Field(None, ge=0, le=10)
    max_len_a: float | None = Field(None, ge=0, le=100)
    max_len_b: int | None = Field(None, ge=0)
    min_len: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    no_repeat_ngram: int | None = Field(None, ge=0, le=10)


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1, description="texts to translate")
    options: DecodeOptions = Field(default_factory=DecodeOptions)
    return_attention: bool = False
    timeout_s: float | None = Field(None, gt=0, description="deadline in seconds (at most the server's)")


class ClassPixels(BaseModel):
    id: int = Field(description="the class id: the mask PNG's pixel value")
    name: str
    color: str = Field(description="#rrggbb, the class's colour in the mask's palette and the overlay")
    pixels: int = Field(description="pixels of this class in the mask")


class GateMap(BaseModel):
    level: int = Field(description="skip level, 0 = full resolution")
    downsample: int = Field(description="the gate's own resolution is the image's / downsample (2**level)")
    png: str = Field(description="base64 grayscale PNG of the image's size (bilinear): 0-255 = gate value 0-1")
    min: float
    mean: float
    max: float


class SegmentResponse(BaseModel):
    model: str
    width: int
    height: int
    format: str = Field(description="the input's format as read from its bytes: PNG, JPEG, TIFF or BMP")
    tile: int = Field(description="the window asked for: an image within it is segmented in one pass (0: any)")
    overlap: int
    classes: list[ClassPixels]
    mask_png: str = Field(description="base64 palette PNG, pixel values = class ids (the format=png body)")
    overlay_png: str = Field(description="base64 RGB PNG: the image, each non-background class tinted (alpha)")
    image_png: str | None = Field(None, description="with image=true: the image as the model saw it")
    gates: list[GateMap] | None = Field(None, description="with gates=true: the attention gates, fine to coarse")
    time_ms: float = Field(description="time in the server, queue included")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="e.g. image_too_large, invalid_image, wrong_task, queue_full")
    message: str
    limit: float | None = Field(None, description="the limit broken, when one was")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _errors(**codes: str) -> dict:
    """OpenAPI `responses` entries: status -> what it means, each with the JSON error body."""
    return {int(k[1:]): {"model": ErrorResponse, "description": v} for k, v in codes.items()}


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def output_json(t: Translation, with_attention: bool) -> dict:
    out = {"text": t.text, "tokens": t.tokens, "score": round(t.score, 6), "finished": t.finished}
    if with_attention:
        # rows: output tokens (plus the end token when it was produced), columns: input tokens
        rows = t.tokens + (["</s>"] if t.finished and t.attention is not None
                           and t.attention.size(0) > len(t.tokens) else [])
        att = t.attention
        out["attention"] = None if att is None else {
            "src_tokens": t.src_tokens, "tgt_tokens": rows, "shape": list(att.shape),
            # (T, S) for the RNNs, (T, L, H, S) for the Transformer
            "weights": [[round(x, 4) for x in r] for r in att.reshape(att.size(0), -1).tolist()]}
    return out


# --- the app ------------------------------------------------------------------------------------------------
class ServerState:
    def __init__(self):
        self.status = "loading"  # loading | ready | draining | failed
        self.error: str | None = None
        self.engine: Engine | None = None
        self.batcher: MicroBatcher | None = None
        self.inflight = 0  # translate and segment requests being handled

    def idle(self) -> bool:
        return self.inflight == 0 and (self.batcher is None or self.batcher.pending == 0)


def create_app(load: Callable[[], Engine], cfg: ServeConfig = ServeConfig()):
    """The FastAPI app. `load` runs on a background thread after start-up; readiness waits for it."""
    state = ServerState()
    sample_ids = itertools.count()

    def run_batch(inputs: list, key) -> list:
        if key[0] == "segment":  # one image per key: images of different sizes are never batched
            return [state.engine.segment(job) for job in inputs]
        return state.engine.translate(inputs, key[1])

    async def submit(inputs: list, key, timeout: float) -> list:
        try:
            return await state.batcher.submit(inputs, key, timeout)
        except QueueFull as e:
            raise RequestError(429, "queue_full", f"server busy: {e}", limit=cfg.max_queue) from None
        except DeadlineExceeded:
            raise RequestError(504, "deadline_exceeded", f"no result within the deadline of {timeout:g} s",
                               limit=timeout) from None

    def load_model() -> None:
        try:
            set_threads(cfg.threads)
            engine = load()
            engine.warm_up()
            state.engine = engine
            state.batcher = MicroBatcher(run_batch, cfg.max_queue, cfg.max_batch_inputs, cfg.batch_wait_ms / 1000)
            if state.status == "loading":
                state.status = "ready"
            log.info("model %s loaded and warmed up", engine.name)
        except Exception as e:  # noqa: BLE001 - reported by /health/ready, not a crash
            state.status, state.error = "failed", f"{type(e).__name__}: {e}"
            log.error("loading the model failed: %s", state.error)

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load_model, name="crossway-load", daemon=True).start()
        yield
        if state.batcher is not None:
            state.batcher.close(timeout=5)

    app = FastAPI(title="crossway", version=__version__, lifespan=lifespan,
                  description="Encoder-decoder models: translate, transliterate, convert graphemes to phonemes; "
                              "segment images (U-Net, Attention U-Net). A server serves one run: GET /v1/info "
                              "says its task and so which of /v1/translate and /v1/segment answers.")
    app.state.crossway = state

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}"
        if first["field"] == "body" and request.headers.get("content-type", "").split(";")[0] != "application/json":
            message = "the body must be a JSON object (send it with Content-Type: application/json)"
        return _error(422, "invalid_request", message, field=first["field"], errors=errors)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: say so in JSON, keep serving
        log.exception("unexpected error")
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready():
        body = {"status": state.status}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/v1/info")
    async def info():
        engine = _engine(state)
        return {**engine.info(), "limits": engine.limits(cfg)}

    @app.get("/v1/stats")
    async def stats():
        b = state.batcher
        return {"status": state.status, "inflight": state.inflight,
                "queue": None if b is None else {"pending": b.pending, **dataclasses.asdict(b.stats)}}

    @app.post("/v1/translate", summary="Translate texts (text runs)",
              responses=_errors(e404="wrong_task: this server serves a segmentation run (use /v1/segment)",
                                e413="body_too_large: over max_body_bytes, refused before it is read",
                                e422="invalid_request, too_many_inputs, empty_input, input_too_long, "
                                     "beam_too_large, output_too_long, invalid_options",
                                e429="queue_full: refused at once", e503="not_ready_loading, not_ready_draining, "
                                "not_ready_failed", e504="deadline_exceeded"))
    async def translate_route(req: TranslateRequest, engine: Annotated[Engine, Depends(_text_engine)]):
        state.inflight += 1
        try:
            dcfg, timeout = _check(req, engine, cfg)
            t0 = time.perf_counter()
            key = ("translate", dcfg, next(sample_ids) if dcfg.strategy == "sample" else None)
            outs = await submit(req.inputs, key, timeout)
            results = []
            for t in outs:
                item = output_json(t, req.return_attention)
                if t.alternatives:
                    item["alternatives"] = [output_json(a, req.return_attention) for a in t.alternatives]
                results.append(item)
            return {"model": engine.name, "outputs": results,
                    "time_ms": round(1000 * (time.perf_counter() - t0), 2)}
        finally:
            state.inflight -= 1

    @app.post("/v1/segment", summary="Segment an image (segmentation runs): the class map as a PNG, or JSON",
              description=SEGMENT_DOC, openapi_extra=_IMAGE_BODY, response_model=None,
              responses={200: {"model": SegmentResponse, "content": {"image/png": {"schema": {
                  "type": "string", "format": "binary"}}}, "description": "format=png (default): the mask, a "
                  "palette PNG whose pixel values are the class ids (GET /v1/info names them); format=json: "
                  "SegmentResponse"},
                  **_errors(e404="wrong_task: this server serves a text run (use /v1/translate)",
                            e413="body_too_large (over max_image_bytes, refused before it is read), or "
                                 "image_too_large (declared width x height over max_image_pixels, refused "
                                 "before decoding)",
                            e415="unsupported_media_type: send the image's bytes as the body (" +
                                 ", ".join(IMAGE_TYPES) + "), not JSON or multipart",
                            e422="invalid_image (empty, not PNG/JPEG/TIFF/BMP, truncated or corrupt), "
                                 "unsupported_image (16-bit or float), invalid_request (a query parameter), "
                                 "tile_too_small, tile_too_large, invalid_options, no_gates, gates_image_too_large",
                            e429="queue_full: refused at once", e503="not_ready_loading, not_ready_draining, "
                            "not_ready_failed", e504="deadline_exceeded")})
    async def segment_route(
            request: Request,
            engine: Annotated[SegmentEngine, Depends(_segment_engine)],
            tile: int | None = Query(None, ge=0, description="window size: images larger than it on a side are "
                                     f"segmented in overlapping tiles; 0 = whole image; default and maximum: the "
                                     f"server's (limits.tile, 0 there = no maximum); at least {MIN_TILE}"),
            overlap: int | None = Query(None, ge=0, description="pixels neighbouring tiles share, at most tile / 2 "
                                        "(default: the server's, limits.overlap)"),
            fmt: Literal["png", "json"] = Query("png", alias="format", description="png: the mask PNG alone; "
                                                "json: mask, overlay, pixel counts (SegmentResponse)"),
            gates: bool = Query(False, description="json: add the attention gates' maps (Attention U-Net runs, "
                                "images within the server's tile)"),
            image: bool = Query(False, description="json: add the image as the model saw it (its channels)"),
            alpha: float = Query(0.5, ge=0, le=1, description="json: the overlay's tint opacity"),
            timeout_s: float | None = Query(None, gt=0, description="deadline in seconds (at most the server's)")):
        state.inflight += 1
        try:
            t0 = time.perf_counter()
            _check_query(request, ("tile", "overlap", "format", "gates", "image", "alpha", "timeout_s"))
            _check_content_type(request)
            body = await request.body()
            with open_image(body, cfg.max_image_pixels) as im:  # 413 / 422 from the header alone
                width, height = im.size
            tiles = _tiles(cfg, tile, overlap, width, height)
            details = fmt == "json"
            if (gates or image) and not details:
                raise RequestError(422, "invalid_options", f"{'gates' if gates else 'image'}=true needs "
                                   f"format=json (format=png answers the mask alone)", field="format")
            if gates:
                _check_gates(engine, cfg, width, height)
            job = SegmentJob(body=body, tiles=tiles, gates=gates, details=details, image=image, alpha=alpha)
            timeout = min(timeout_s or cfg.timeout_s, cfg.timeout_s)
            out = (await submit([job], ("segment", next(sample_ids)), timeout))[0]
            ms = round(1000 * (time.perf_counter() - t0), 2)
            if not details:
                return Response(out["mask_png"], media_type="image/png", headers={
                    "X-Crossway-Width": str(out["width"]), "X-Crossway-Height": str(out["height"]),
                    "X-Crossway-Time-Ms": str(ms)})
            return _segment_json(engine, out, tiles, ms)
        finally:
            state.inflight -= 1

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("crossway").joinpath("web/index.html").read_text(encoding="utf-8"))

    return BodyLimit(app, cfg.max_body_bytes, {"/v1/segment": cfg.max_image_bytes})


def _engine(state: ServerState, task: str | None = None) -> Engine | SegmentEngine:
    """The engine, if ready (503 otherwise); with `task`, only if it serves that task (404 naming the endpoint that
    does: the route exists, but not for this server's run, as OpenAI answers a chat model on /v1/completions)."""
    if state.status != "ready" or state.engine is None:
        msg = {"loading": "the model is still loading", "draining": "the server is shutting down",
               "failed": f"the model failed to load: {state.error}"}.get(state.status, state.status)
        raise RequestError(503, f"not_ready_{state.status}", msg)
    engine = state.engine
    if task is not None and engine.task != task:
        raise RequestError(404, "wrong_task", f"this server serves {engine.name}, a {engine.task} run: send its "
                           f"requests to {ENDPOINTS[engine.task]} ({ENDPOINTS[task]} is for {task} runs)",
                           task=engine.task, endpoint=ENDPOINTS[engine.task])
    return engine


# the routes' engines, as dependencies: FastAPI resolves them before it checks a request's parameters, so a server
# that is not ready (503) or serves another task (404) says so first (async: no thread-pool hop)
async def _text_engine(request: Request) -> Engine:
    return _engine(request.app.state.crossway, "text")


async def _segment_engine(request: Request) -> SegmentEngine:
    return _engine(request.app.state.crossway, "segmentation")


# --- /v1/segment's checks and answer ---------------------------------------------------------------------------
SEGMENT_DOC = f"""The request body is the image's bytes (curl --data-binary @cells.png -H 'Content-Type: image/png');
PNG, JPEG, TIFF and BMP are read (by content), converted to the run's channels as `crossway segment` converts
files (grayscale or RGB, alpha dropped, 8 bits per channel, EXIF orientation not applied). The mask has exactly
the image's size and equals `crossway.segment_image(model, image, TileConfig(tile, overlap))`. Limits (GET
/v1/info): the body's bytes, the declared pixels (checked from the header before decoding), and tiles of at least
{MIN_TILE} pixels and at most the server's tile, overlapping by at most half a tile."""

_IMAGE_BODY = {"requestBody": {"required": True, "description": "the image file's bytes", "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in (*IMAGE_TYPES, "application/octet-stream")}}}


def _check_query(request: Request, known: tuple[str, ...]) -> None:
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise RequestError(422, "invalid_request", f"unknown query parameter(s) {', '.join(unknown)}; valid: "
                           f"{', '.join(known)}", field=unknown[0])


def _check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in IMAGE_TYPES + IMAGE_ALIASES:
        how = "multipart uploads are not read" if ctype.startswith("multipart/") else f"{ctype} is not an image type"
        raise RequestError(415, "unsupported_media_type", f"{how}: send the image's bytes as the body with "
                           f"Content-Type {', '.join(IMAGE_TYPES)} (e.g. curl --data-binary @image.png -H "
                           f"'Content-Type: image/png' URL)", content_type=ctype)


def _tiles(cfg: ServeConfig, tile: int | None, overlap: int | None, width: int, height: int) -> TileConfig:
    """The request's tiling, checked against the server's window (cfg.tile: the most pixels segmented at once)."""
    t = cfg.tile if tile is None else tile
    if t and t < MIN_TILE:
        raise RequestError(422, "tile_too_small", f"tile={t} is under the minimum of {MIN_TILE} (0 = whole image)",
                           field="tile", limit=MIN_TILE)
    if cfg.tile and (t > cfg.tile or not t and max(width, height) > cfg.tile):
        what = f"tile={t}" if t else f"tile=0 (the whole {width}x{height} image at once)"
        raise RequestError(422, "tile_too_large", f"{what} is over this server's window of {cfg.tile} pixels a "
                           f"side; ask for a tile between {MIN_TILE} and {cfg.tile}", field="tile", limit=cfg.tile)
    o = min(cfg.overlap, t // 2) if overlap is None else overlap
    if t and o > t // 2:
        raise RequestError(422, "invalid_options", f"overlap={o} is over half the tile ({t} // 2 = {t // 2})",
                           field="overlap", limit=t // 2)
    return TileConfig(tile=t, overlap=o)


def _check_gates(engine: SegmentEngine, cfg: ServeConfig, width: int, height: int) -> None:
    if not engine.gates:
        raise RequestError(422, "no_gates", f"{engine.name} is a {engine.loaded.config.model.arch} without "
                           f"attention gates (model.attention_gates=false): it has no gate maps", field="gates")
    if cfg.tile and max(width, height) > cfg.tile:
        raise RequestError(422, "gates_image_too_large", f"gate maps come from one pass over the whole image, "
                           f"which this server makes for images up to {cfg.tile} pixels a side; this one is "
                           f"{width}x{height}", field="gates", limit=cfg.tile)


def _segment_json(engine: SegmentEngine, out: dict, tiles: TileConfig, ms: float) -> dict:
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    body = {"model": engine.name, "width": out["width"], "height": out["height"], "format": out["format"],
            "tile": tiles.tile, "overlap": tiles.overlap,
            "classes": [{"id": i, "name": n, "color": _hex(i), "pixels": c}
                        for i, (n, c) in enumerate(zip(engine.loaded.tgt.names, out["pixels"], strict=True))],
            "mask_png": b64(out["mask_png"]), "overlay_png": b64(out["overlay_png"])}
    if "image_png" in out:
        body["image_png"] = b64(out["image_png"])
    if "gates" in out:
        body["gates"] = [{**g, "png": b64(g["png"])} for g in out["gates"]]
    return {**body, "time_ms": ms}


def _limits(cfg: ServeConfig, engine: Engine) -> dict:
    out_cap = cfg.max_output_tokens
    if engine.max_positions:
        out_cap = min(out_cap, engine.max_positions)
    return {"max_inputs": cfg.max_inputs, "max_input_tokens": cfg.max_input_tokens or engine.max_src_len,
            "max_output_tokens": out_cap, "max_beam_size": cfg.max_beam_size, "max_body_bytes": cfg.max_body_bytes,
            "timeout_s": cfg.timeout_s}


def _check(req, engine: Engine, cfg: ServeConfig) -> tuple[DecodeConfig, float]:
    """Every limit a request can break, as a 422 naming it; returns the decoding options and the deadline."""
    limits = _limits(cfg, engine)
    if len(req.inputs) > limits["max_inputs"]:
        raise RequestError(422, "too_many_inputs", f"{len(req.inputs)} inputs, over the limit of "
                           f"{limits['max_inputs']} per request", field="inputs", limit=limits["max_inputs"])
    longest = 0
    for i, text in enumerate(req.inputs):
        if not text.strip():
            raise RequestError(422, "empty_input", f"inputs[{i}] is empty", field=f"inputs[{i}]")
        n = engine.count_tokens(text)
        if n > limits["max_input_tokens"]:
            raise RequestError(422, "input_too_long", f"inputs[{i}] has {n} tokens, over the limit of "
                               f"{limits['max_input_tokens']}", field=f"inputs[{i}]", limit=limits["max_input_tokens"])
        longest = max(longest, n)
    options = {k: v for k, v in req.options.model_dump().items() if v is not None}
    try:
        dcfg = dataclasses.replace(engine.loaded.config.decode, **options, return_attention=req.return_attention)
    except (ValueError, TypeError) as e:
        raise RequestError(422, "invalid_options", str(e), field="options") from None
    try:
        check_rerank(dcfg, engine.rescorers)
    except ConfigError as e:
        raise RequestError(422, "invalid_options", f"this server reranks with {len(engine.rescorers)} rescoring "
                           f"model(s): {e}", field="options") from None
    if dcfg.strategy == "beam" and dcfg.beam_size > cfg.max_beam_size:
        raise RequestError(422, "beam_too_large", f"options.beam_size={dcfg.beam_size} is over the limit of "
                           f"{cfg.max_beam_size}", field="options.beam_size", limit=cfg.max_beam_size)
    max_out = int(longest * dcfg.max_len_a) + dcfg.max_len_b
    if max_out > limits["max_output_tokens"] or dcfg.min_len > max_out:
        raise RequestError(422, "output_too_long", f"max_len_a * {longest} + max_len_b = {max_out} output tokens "
                           f"(min_len {dcfg.min_len}); the limit is {limits['max_output_tokens']} and min_len may "
                           f"not exceed it", field="options", limit=limits["max_output_tokens"])
    timeout = min(req.timeout_s or cfg.timeout_s, cfg.timeout_s)
    return dcfg, timeout


# --- body size -----------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length before reading anything, or as soon
    as a streamed (chunked) body passes the limit. Bodies under the limit are read here and handed on whole."""

    def __init__(self, app, max_bytes: int, paths: dict[str, int] | None = None):
        """`paths`: other limits for some paths (images are larger than JSON bodies)."""
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})
        self.state = app.state.crossway  # tests and `serve` reach the server state through the wrapper

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope["path"], self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._reject(send, f"{int(length)} bytes", limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await self._reject(send, f"more than {limit} bytes", limit)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send, size: str, limit: int):
        body = json.dumps({"error": {"code": "body_too_large", "message": f"request body of {size} is over "
                                     f"the limit of {limit} bytes", "limit": limit}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --- running it -----------------------------------------------------------------------------------------------
def serve(run: str | Path, cfg: ServeConfig = ServeConfig(), log_level: str = "info") -> None:
    """Serve the model in `run` until SIGTERM/SIGINT, then drain (see the module docstring)."""
    for path in (run, *cfg.rescore):
        if not Path(path).exists():
            raise CrosswayError(f"{path}: no such model directory")
    # a bad decoding option, options that give the rescorers no n-best list, or text options for a segmentation
    # run fail here, before the server starts
    config = load_config(run, cfg.checkpoint)
    if config.task == "text":
        check_rerank(decode_overrides(config.decode, list(cfg.decode)), cfg.rescore)
    else:
        _no_text_options(run, cfg)
    app = create_app(lambda: load_engine(run, cfg), cfg)
    server = DrainingServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level,
                                           timeout_graceful_shutdown=cfg.drain_timeout_s),
                            app.state, cfg.drain_timeout_s)
    server.run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain: the first SIGTERM/SIGINT marks the server draining (ready -> 503, new
    requests -> 503), waits until no translation is in flight or queued (at most `drain_timeout_s`), then
    lets uvicorn shut down. A second signal exits at once."""

    def __init__(self, config, state: ServerState, drain_timeout_s: float):
        super().__init__(config)
        self.crossway_state, self.drain_timeout_s = state, drain_timeout_s
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:
            return super().handle_exit(sig, frame)
        self._draining = True
        self.crossway_state.status = "draining"
        log.info("draining: %d requests in flight", self.crossway_state.inflight)

        def wait_then_exit():
            until = time.monotonic() + self.drain_timeout_s
            while not self.crossway_state.idle() and time.monotonic() < until:
                time.sleep(0.02)
            time.sleep(0.05)  # let the last responses leave
            super(DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=wait_then_exit, name="crossway-drain", daemon=True).start()
