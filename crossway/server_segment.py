"""The segmentation half of the server (crossway.server): `POST /v1/segment` and the engine behind it.

The request body is the image's bytes. On the event loop the request is checked from the image's header alone
(crossway.data.images.open_image with decode=False: 413 over the declared pixel limit, 422 if unreadable), then
the tiling and options; the worker thread decodes the image (crossway.data.images.load_image, as `crossway
segment` reads files), segments it and writes the PNGs, so the queue holds only compressed bytes.

The checks of an image request (check_query, check_content_type, image_header, image_error) and the OpenAPI
request body (IMAGE_BODY) serve `POST /v1/caption` too (crossway.server_caption).
"""

from __future__ import annotations

import base64
import io
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field

from crossway.data.images import ImageTooLarge, UnsupportedImageMode, load_image, open_image
from crossway.errors import ConfigError, DataError
from crossway.segment import PALETTE, TileConfig, gate_maps, mask_png, overlay, segment_image
from crossway.server import MIN_TILE, MIN_TIMEOUT_S, RequestError, ServeConfig, ServerState, check_task, openapi_errors
from crossway.training.checkpoint import LoadedModel, load_checkpoint

if TYPE_CHECKING:
    from crossway.config import RunConfig

IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp")  # what the image endpoints read, by content
IMAGE_ALIASES = ("image/jpg", "image/tif", "image/x-ms-bmp", "image/x-bmp", "application/octet-stream")
PNG_LEVEL = 1  # zlib level of the PNGs the server writes: speed first (level 6 took 2x as long on a 3-Mpixel image)


class SegmentEngine:
    """A loaded segmentation run: image bytes in, a class map (crossway.segment_image) and its PNGs out."""

    task = "segmentation"

    def __init__(self, loaded: LoadedModel, name: str, max_pixels: int = ServeConfig.max_image_pixels):
        check_task(loaded, self.task)
        self.loaded, self.name, self.max_pixels = loaded, name, max_pixels
        self.gates = bool(getattr(loaded.config.model, "attention_gates", False))

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig(), weights: bool = True) -> SegmentEngine:  # noqa: B008
        _no_text_options(run, cfg)
        return cls(load_checkpoint(run, cfg.checkpoint, weights), Path(run).name, cfg.max_image_pixels)

    @classmethod
    def check_options(cls, run: str | Path, config: RunConfig, cfg: ServeConfig) -> None:
        """`serve`'s check before the server starts (crossway.server_text.TextEngine.check_options for text runs)."""
        _no_text_options(run, cfg)

    def run_batch(self, jobs: list[SegmentJob], key) -> list[dict]:
        """The batcher's model call: one image per key, so images of different sizes are never batched."""
        return [self.segment(job) for job in jobs]

    def segment(self, job: SegmentJob) -> dict:
        """Runs on the batcher's worker thread: decode, segment, and write the PNGs the request asked for."""
        try:
            image = load_image(job.body, self.loaded.src.channels, self.max_pixels)  # (C, H, W) uint8
        except DataError as e:
            raise image_error(e) from None
        mask = segment_image(self.loaded.model, image, job.tiles)  # (H, W) class ids
        gates = gate_maps(self.loaded.model, image) if job.gates else []
        buf = io.BytesIO()
        mask_png(mask, buf, compress_level=PNG_LEVEL)
        out = {"width": image.shape[2], "height": image.shape[1], "mask_png": buf.getvalue()}
        if job.details:
            out["pixels"] = torch.bincount(mask.flatten(), minlength=self.loaded.tgt.size).tolist()
            out["overlay_png"] = encode_png(overlay(image, mask, job.alpha))
        if job.image:
            out["image_png"] = encode_png(image.permute(1, 2, 0).squeeze(2).numpy())  # as the model saw it
        if gates:  # fine to coarse, each upsampled to (H, W); 0-255 = gate values 0-1
            out["gates"] = [{"level": i, "downsample": 2 ** i, "min": round(float(g.min()), 4),
                             "mean": round(float(g.mean()), 4), "max": round(float(g.max()), 4),
                             "png": encode_png(g.mul(255).round().to(torch.uint8).numpy())}
                            for i, g in enumerate(gates)]
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
        self.segment(SegmentJob(body=encode_png(blank), tiles=TileConfig(), gates=self.gates, details=True,
                                image=True))


def _no_text_options(run: str | Path, cfg: ServeConfig) -> None:
    """Options that only a text run can use are an error for a segmentation run, not silently ignored."""
    used = [name for name, on in (("decode.* options", cfg.decode), ("rescore", cfg.rescore),
                                   ("rescore weights", cfg.rescore_weights is not None),
                                   ("quantize", cfg.quantize != "none")) if on]
    if used:
        raise ConfigError(f"{run} is a segmentation run; these options are for text runs only: {', '.join(used)}")


@dataclass(frozen=True, kw_only=True)
class SegmentJob:
    """One image to segment, as the worker thread gets it."""
    body: bytes  # the encoded image (decoded on the worker: the queue holds compressed bytes only)
    tiles: TileConfig
    gates: bool = False  # also the attention gates' maps (a whole-image pass)
    details: bool = False  # also the per-class pixel counts and the overlay PNG
    image: bool = False  # also the image as the model saw it (converted to its channels), as a PNG
    alpha: float = 0.5  # the overlay's tint opacity


def image_error(e: DataError) -> RequestError:
    """crossway.data.images' verdict on a request's image as the HTTP answer: 413 for too many declared pixels,
    422 for anything else (unsupported_image for a pixel format crossway does not read, else invalid_image)."""
    if isinstance(e, ImageTooLarge):
        size = {} if e.width is None else {"width": e.width, "height": e.height}
        return RequestError(413, "image_too_large", str(e), limit=e.limit, **size)
    return RequestError(422, "unsupported_image" if isinstance(e, UnsupportedImageMode) else "invalid_image", str(e))


def encode_png(arr: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _hex(class_id: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*PALETTE[class_id % len(PALETTE)])


# --- the response --------------------------------------------------------------------------------------------
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



# --- the endpoint ---------------------------------------------------------------------------------------------
SEGMENT_DOC = f"""The request body is the image's bytes (curl --data-binary @cells.png -H 'Content-Type: image/png');
PNG, JPEG, TIFF and BMP are read (by content), converted to the run's channels as `crossway segment` converts
files (grayscale or RGB, alpha dropped, 8 bits per channel, EXIF orientation not applied). The mask has exactly
the image's size and equals `crossway.segment_image(model, image, TileConfig(tile, overlap))`. Limits (GET
/v1/info): the body's bytes, the declared pixels (checked from the header before decoding), and tiles of at least
{MIN_TILE} pixels and at most the server's tile, overlapping by at most half a tile."""

IMAGE_BODY = {"requestBody": {"required": True, "description": "the image file's bytes", "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in (*IMAGE_TYPES, "application/octet-stream")}}}
def upload_openapi_errors(e413: str, e415: str, e422: str) -> dict:
    """The error answers every endpoint whose body is a file (images, audio) shares (404, 429, 503, 504), with
    its own 413, 415 and 422s."""
    return openapi_errors(
        e404="wrong_task: this server serves a run of another task (the error names its endpoint)", e413=e413,
        e415=e415, e422=e422, e429="queue_full: refused at once",
        e503="not_ready_loading, not_ready_draining, not_ready_failed", e504="deadline_exceeded")


def image_openapi_errors(e422: str) -> dict:
    """The error answers every image endpoint shares (404, 413, 415, 429, 503, 504), with its own 422s."""
    return upload_openapi_errors(
        e413="body_too_large (over max_image_bytes, refused before it is read), or image_too_large "
             "(declared width x height over max_image_pixels, refused before decoding)",
        e415="unsupported_media_type: send the image's bytes as the body (" + ", ".join(IMAGE_TYPES) +
             "), not JSON or multipart", e422=e422)


_RESPONSES = {200: {"model": SegmentResponse, "content": {"image/png": {"schema": {"type": "string", "format":
                    "binary"}}}, "description": "format=png (default): the mask, a palette PNG whose pixel values "
                    "are the class ids (GET /v1/info names them); format=json: SegmentResponse"},
              **image_openapi_errors(
                  "invalid_image (empty, not PNG/JPEG/TIFF/BMP, truncated or corrupt), unsupported_image "
                  "(16-bit or float), invalid_request (a query parameter), tile_too_small, tile_too_large, "
                  "invalid_options, no_gates, gates_image_too_large")}


def add_segment_route(app: FastAPI, state: ServerState, cfg: ServeConfig) -> None:
    """`POST /v1/segment` on `app` (crossway.server.create_app adds it to every server: a text run answers 404)."""
    job_ids = itertools.count()  # one key per image: images are never batched together

    @app.post("/v1/segment", summary="Segment an image (segmentation runs): the class map as a PNG, or JSON",
              description=SEGMENT_DOC, openapi_extra=IMAGE_BODY, response_model=None, responses=_RESPONSES)
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
            timeout_s: float | None = Query(None, ge=MIN_TIMEOUT_S, description="deadline in seconds (at most the "
                                            "server's)")):
        state.inflight += 1
        try:
            t0 = time.perf_counter()
            check_query(request, ("tile", "overlap", "format", "gates", "image", "alpha", "timeout_s"))
            check_content_type(request)
            body = await request.body()
            width, height, image_format = image_header(body, cfg.max_image_pixels)
            tiles = _tiles(cfg, tile, overlap, width, height)
            details = fmt == "json"
            if (gates or image) and not details:
                raise RequestError(422, "invalid_options", f"{'gates' if gates else 'image'}=true needs "
                                   f"format=json (format=png answers the mask alone)", field="format")
            if gates:
                _check_gates(engine, cfg, width, height)
            job = SegmentJob(body=body, tiles=tiles, gates=gates, details=details, image=image, alpha=alpha)
            timeout = min(timeout_s or cfg.timeout_s, cfg.timeout_s)
            out = (await state.submit([job], ("segment", next(job_ids)), timeout))[0]
            ms = round(1000 * (time.perf_counter() - t0), 2)
            if not details:
                return Response(out["mask_png"], media_type="image/png", headers={
                    "X-Crossway-Width": str(out["width"]), "X-Crossway-Height": str(out["height"]),
                    "X-Crossway-Time-Ms": str(ms)})
            return _segment_json(engine, out, image_format, tiles, ms)
        finally:
            state.inflight -= 1


async def _segment_engine(request: Request) -> SegmentEngine:  # as crossway.server_text._text_engine: 503 or 404 first
    return request.app.state.crossway.ready_engine("segmentation")


def image_header(body: bytes, max_pixels: int) -> tuple[int, int, str]:
    """The image's width, height and format, from its header alone: 413 over `max_pixels`, 422 if unreadable."""
    if not body:
        raise RequestError(422, "invalid_image", "empty body: send the image's bytes (PNG, JPEG, TIFF or BMP) as "
                                                 "the request body")
    try:
        with open_image(body, max_pixels, decode=False) as im:
            return im.width, im.height, im.format
    except DataError as e:
        raise image_error(e) from None


def check_query(request: Request, known: tuple[str, ...]) -> None:
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise RequestError(422, "invalid_request", f"unknown query parameter(s) {', '.join(unknown)}; valid: "
                           f"{', '.join(known)}", field=unknown[0])


def check_content_type(request: Request) -> None:
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


def _segment_json(engine: SegmentEngine, out: dict, image_format: str, tiles: TileConfig, ms: float) -> dict:
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    body = {"model": engine.name, "width": out["width"], "height": out["height"], "format": image_format,
            "tile": tiles.tile, "overlap": tiles.overlap,
            "classes": [{"id": i, "name": n, "color": _hex(i), "pixels": c}
                        for i, (n, c) in enumerate(zip(engine.loaded.tgt.names, out["pixels"], strict=True))],
            "mask_png": b64(out["mask_png"]), "overlay_png": b64(out["overlay_png"])}
    if "image_png" in out:
        body["image_png"] = b64(out["image_png"])
    if "gates" in out:
        body["gates"] = [{**g, "png": b64(g["png"])} for g in out["gates"]]
    return {**body, "time_ms": ms}
