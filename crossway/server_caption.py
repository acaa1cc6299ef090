"""The image-to-text half of the server (crossway.server): `POST /v1/caption` and the engine behind it.

The request body is the image's bytes; the decoding options are query parameters. On the event loop the request
is checked as /v1/segment checks it (crossway.server_segment: content type, then the image's header alone: 413
over the declared pixel limit, 422 if unreadable), then its options against the server's limits. The worker
thread takes every queued request with the same decoding options (up to max_batch_inputs images), decodes the
images (crossway.data.images.load_image, as `crossway caption` reads files) and captions them in one
`crossway.caption` call, so concurrent uploads share a model call and the queue holds only compressed bytes. An
image that fails to decode there gets its own 422; the others in its call are captioned as usual.

Every call asks the search for attention, so requests with and without `attention=true` batch together and every
answer knows its grid (the LSTM decoder computes the weights anyway; the Transformer decoder's explicit attention
replaces fused SDPA, a small cost over a grid of cells). The maps are sent only when asked, one (h, w) map per
output token: the LSTM decoder's attention, or the Transformer decoder's last layer, mean of heads
(plots.attention_matrix); the caption is the same with or without them (tested).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field
from torch import Tensor

from crossway.config import decode_overrides
from crossway.data.images import load_image
from crossway.decoding import DecodeConfig
from crossway.errors import DataError
from crossway.inference import Translation, caption
from crossway.plots import attention_matrix
from crossway.server import MIN_TIMEOUT_S, RequestError, ServeConfig, ServerState, check_task, load_run, no_rescorers
from crossway.server_segment import (
    IMAGE_BODY,
    IMAGE_TYPES,
    check_content_type,
    check_query,
    encode_png,
    image_error,
    image_header,
    image_openapi_errors,
)
from crossway.training.checkpoint import LoadedModel

if TYPE_CHECKING:
    from crossway.config import RunConfig

OPTIONS = ("strategy", "beam_size", "n_best", "length_penalty", "max_len_b")  # query parameters -> DecodeConfig
WARM_UP_SIDE = 64  # the warm-up image's side when the model keeps the aspect ratio (data.width = 0)


class CaptionEngine:
    """A loaded image_to_text run: image bytes in, its caption (or text line), score, n-best and attention out."""

    task = "image_to_text"

    def __init__(self, loaded: LoadedModel, name: str, max_pixels: int = ServeConfig.max_image_pixels):
        check_task(loaded, self.task)
        self.loaded, self.name, self.max_pixels = loaded, name, max_pixels

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig(), weights: bool = True) -> CaptionEngine:  # noqa: B008
        """The model in `run` with `cfg`'s checkpoint choice, quantization and default decoding options."""
        no_rescorers(run, cfg, "image_to_text")
        return cls(load_run(run, cfg, weights), Path(run).name, cfg.max_image_pixels)

    @classmethod
    def check_options(cls, run: str | Path, config: RunConfig, cfg: ServeConfig) -> None:
        """`serve`'s check before the server starts: rescorers, or a bad default decoding option."""
        no_rescorers(run, cfg, "image_to_text")
        decode_overrides(config.decode, list(cfg.decode))

    def run_batch(self, jobs: list[CaptionJob], key) -> list[dict | RequestError]:
        """The batcher's model call: the images of requests that share a key (their decoding options, key[1])
        in one caption call. An image that does not decode is its own 422 (returned, not raised: the batcher
        would hand a raised error to every request of the call)."""
        out: list[dict | RequestError | None] = [None] * len(jobs)
        read = []
        for i, job in enumerate(jobs):
            try:
                read.append((i, self.read(job.body)))
            except DataError as e:
                out[i] = image_error(e)
        if read:
            captions = self.caption([image for _, image in read], key[1])
            for (i, _), t in zip(read, captions, strict=True):
                out[i] = caption_json(t, jobs[i].attention)
        return out  # type: ignore[return-value]

    def read(self, body: bytes) -> Tensor:
        """An image's bytes -> (C, H, W) uint8 at the model's size, as crossway.caption reads them (under the
        server's pixel limit)."""
        return self.loaded.src.load(load_image(body, self.loaded.src.channels, self.max_pixels))

    def caption(self, images: list[Tensor], cfg: DecodeConfig) -> list[Translation]:
        return caption(self.loaded.model, self.loaded.src, self.loaded.tgt, images, cfg)

    def info(self) -> dict:
        cfg, src = self.loaded.config, self.loaded.src
        return {"name": self.name, "task": self.task, "arch": cfg.model.arch,
                "decoder": getattr(cfg.model, "decoder", None), "channels": src.channels,
                "height": src.height, "width": src.width, "tgt_tokenizer": cfg.data.tgt_tokenizer,
                "decode": dataclasses.asdict(cfg.decode)}

    def limits(self, cfg: ServeConfig) -> dict:
        return {"max_body_bytes": cfg.max_image_bytes, "max_image_pixels": cfg.max_image_pixels,
                "content_types": list(IMAGE_TYPES), "max_beam_size": cfg.max_beam_size,
                "max_output_tokens": cfg.max_output_tokens, "timeout_s": cfg.timeout_s}

    def warm_up(self) -> None:
        src = self.loaded.src
        size = (src.height or WARM_UP_SIDE, src.width or WARM_UP_SIDE)
        blank = encode_png(np.zeros(size if src.channels == 1 else (*size, 3), np.uint8))
        cfg = dataclasses.replace(self.loaded.config.decode, return_attention=True)
        (out,) = self.run_batch([CaptionJob(body=blank, attention=True)], ("caption", cfg, None))
        if isinstance(out, RequestError):
            raise DataError(f"the warm-up image: {out.message}")


@dataclass(frozen=True, kw_only=True)
class CaptionJob:
    """One image to caption, as the worker thread gets it."""
    body: bytes  # the encoded image (decoded on the worker: the queue holds compressed bytes only)
    attention: bool = False  # send the attention maps


def caption_json(t: Translation, with_attention: bool) -> dict:
    """A caption as the endpoint answers it (CaptionResponse, less model, size and time)."""
    out = {"text": t.text, "tokens": t.tokens, "score": round(t.score, 6), "finished": t.finished,
           "grid": None if t.attention is None else list(t.attention.shape[-2:])}
    if with_attention:
        out["attention"] = None if t.attention is None else attention_maps(t.attention)
    out["alternatives"] = [{"text": a.text, "tokens": a.tokens, "score": round(a.score, 6), "finished": a.finished}
                           for a in t.alternatives]
    return out


def attention_maps(attention: Tensor) -> list:
    """(T, h, w) (LSTM decoder) or (T, L, H, h, w) (Transformer decoder: its last layer, mean of heads) -> T
    nested (h, w) lists, 4 decimals."""
    h, w = attention.shape[-2:]
    maps = attention_matrix(attention.flatten(-2), None, None).unflatten(-1, (h, w))  # (T, h, w)
    return maps.double().mul(1e4).round().div(1e4).tolist()  # (double: 0.0156, not 0.015599999949336052)


# --- the response --------------------------------------------------------------------------------------------
class Alternative(BaseModel):
    text: str
    tokens: list[str]
    score: float
    finished: bool


class CaptionResponse(BaseModel):
    model: str
    text: str = Field(description="the caption (detokenized)")
    tokens: list[str] = Field(description="its tokens")
    score: float = Field(description="sum of the tokens' log-probabilities (the end token's included)")
    finished: bool = Field(description="false when max_len_b stopped the search before the end token")
    grid: list[int] | None = Field(description="[h, w]: the encoder's grid of cells over the image as the model "
                                               "saw it (resized to the run's height and width)")
    attention: list[list[list[float]]] | None = Field(
        None, description="with attention=true: one h x w map per token, then the end token's when finished; "
                          "each sums to 1 (the Transformer decoder's: last layer, mean of heads)")
    alternatives: list[Alternative] = Field(description="beam with n_best > 1: the rest of the n-best list")
    width: int = Field(description="the image's width as sent")
    height: int
    format: str = Field(description="the input's format as read from its bytes: PNG, JPEG, TIFF or BMP")
    time_ms: float = Field(description="time in the server, queue included")


# --- the endpoint ---------------------------------------------------------------------------------------------
CAPTION_DOC = """The request body is the image's bytes (curl --data-binary @photo.png -H 'Content-Type: image/png');
PNG, JPEG, TIFF and BMP are read (by content), converted to the run's channels and resized to its size as
`crossway caption` reads files. The answer equals `crossway.caption(model, src, tgt, [image], cfg)` with the
server's decoding options and the request's overrides. Requests with equal options that arrive together share one
model call. Limits (GET /v1/info): the body's bytes, the declared pixels (checked from the header before
decoding), the beam size and max_len_b."""

_RESPONSES = {200: {"model": CaptionResponse, "description": "the caption, its score, n-best list and attention"},
              **image_openapi_errors(
                  "invalid_image (empty, not PNG/JPEG/TIFF/BMP, truncated or corrupt, or too wide for a "
                  "text-line model), unsupported_image (16-bit or float), invalid_request (a query "
                  "parameter), invalid_options, beam_too_large, output_too_long")}


def add_caption_route(app: FastAPI, state: ServerState, cfg: ServeConfig) -> None:
    """`POST /v1/caption` on `app` (crossway.server.create_app adds it to every server: other runs answer 404)."""
    sample_ids = itertools.count()  # a server whose default is sampling never merges requests (seeded sampling)

    @app.post("/v1/caption", summary="Caption an image, or read its text line (image_to_text runs)",
              description=CAPTION_DOC, openapi_extra=IMAGE_BODY, response_model=None, responses=_RESPONSES)
    async def caption_route(
            request: Request,
            engine: Annotated[CaptionEngine, Depends(_caption_engine)],
            strategy: Literal["greedy", "beam"] | None = Query(None, description="default: the server's"),
            beam_size: int | None = Query(None, ge=1, description="beam: hypotheses kept per step"),
            n_best: int | None = Query(None, ge=1, description="beam: captions returned (the best, then "
                                       "alternatives), at most beam_size"),
            length_penalty: float | None = Query(None, ge=0, le=10, description="beam: GNMT alpha"),
            max_len_b: int | None = Query(None, ge=0, description="the most tokens (plus the server's max_len_a "
                                          "x grid cells; at most limits.max_output_tokens)"),
            attention: bool = Query(False, description="add the attention maps, one h x w grid per token"),
            timeout_s: float | None = Query(None, ge=MIN_TIMEOUT_S, description="deadline in seconds (at most the "
                                            "server's)")):
        state.inflight += 1
        try:
            t0 = time.perf_counter()
            check_query(request, (*OPTIONS, "attention", "timeout_s"))
            check_content_type(request)
            body = await request.body()
            width, height, image_format = image_header(body, cfg.max_image_pixels)
            dcfg = decode_options(engine, cfg, strategy=strategy, beam_size=beam_size, n_best=n_best,
                                   length_penalty=length_penalty, max_len_b=max_len_b)
            timeout = min(timeout_s or cfg.timeout_s, cfg.timeout_s)
            key = ("caption", dcfg, next(sample_ids) if dcfg.strategy == "sample" else None)
            out = (await state.submit([CaptionJob(body=body, attention=attention)], key, timeout))[0]
            if isinstance(out, RequestError):
                raise out
            return {"model": engine.name, **out, "width": width, "height": height, "format": image_format,
                    "time_ms": round(1000 * (time.perf_counter() - t0), 2)}
        finally:
            state.inflight -= 1


async def _caption_engine(request: Request) -> CaptionEngine:  # as crossway.server_text._text_engine: 503 or 404 first
    return request.app.state.crossway.ready_engine("image_to_text")


def decode_options(engine: CaptionEngine, cfg: ServeConfig, **options) -> DecodeConfig:
    """The server's decoding options with the request's overrides (always with attention: see the module
    docstring), each limit a 422 naming the parameter that broke it."""
    given = {k: v for k, v in options.items() if v is not None}
    default = engine.loaded.config.decode
    try:
        dcfg = dataclasses.replace(default, **given, return_attention=True)
    except ValueError as e:  # n_best over beam_size: the one combination of valid parameters DecodeConfig refuses
        beam = given.get("beam_size", default.beam_size)
        raise RequestError(422, "invalid_options", f"n_best={given.get('n_best', default.n_best)} is over "
                           f"beam_size={beam} ({e})", field="n_best", limit=beam) from None
    if dcfg.n_best > 1 and dcfg.strategy != "beam":  # the server's default n-best goes with its default beam
        if "n_best" in given:
            raise RequestError(422, "invalid_options", f"n_best={dcfg.n_best} needs strategy=beam "
                               f"({dcfg.strategy} search finds one caption)", field="n_best")
        dcfg = dataclasses.replace(dcfg, n_best=1)
    if dcfg.strategy == "beam" and dcfg.beam_size > cfg.max_beam_size:
        raise RequestError(422, "beam_too_large", f"beam_size={dcfg.beam_size} is over the limit of "
                           f"{cfg.max_beam_size}", field="beam_size", limit=cfg.max_beam_size)
    if dcfg.max_len_b > cfg.max_output_tokens:
        raise RequestError(422, "output_too_long", f"max_len_b={dcfg.max_len_b} output tokens is over the limit "
                           f"of {cfg.max_output_tokens}", field="max_len_b", limit=cfg.max_output_tokens)
    return dcfg

