"""HTTP serving: `POST /v1/translate` (text runs, crossway.server_text), `POST /v1/segment` (segmentation runs,
crossway.server_segment), `POST /v1/caption` (image_to_text runs, crossway.server_caption) or `POST /v1/transcribe`
(speech runs, crossway.server_speech), health probes, the web page at `/`, and the limits that keep it up.

    serve("runs/g2p-rnn", ServeConfig(port=8000))      # what `crossway serve --model runs/g2p-rnn` calls

A server loads one run; its task (the run's `task`) picks the engine (_tasks) and the endpoint that answers:
the others are a 404 `wrong_task` naming the right one, and `/v1/info` says the task, so the page shows its tab.

Request flow: body-size guard (413 before the body is read; images have their own limit) -> JSON schema or
query parameters (422) -> the endpoint's limits (422 naming the limit; 413 for an image's declared pixels) ->
the micro-batcher's bounded queue (429 at once when full) -> one model call for requests that arrived together
with equal decoding options (texts, or images to caption; an image to segment is a call of its own) -> response,
or 504 at the request's deadline (its queue slot is freed).
`/health/ready` is 503 until the model is loaded and a warm-up decode or segmentation has run, 200 while
serving, and 503 again once SIGTERM starts the drain: new requests are refused with 503, requests in flight
finish, then the server exits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossway import __version__
from crossway.batcher import DeadlineExceeded, MicroBatcher, QueueFull
from crossway.config import decode_overrides
from crossway.errors import ConfigError, CrosswayError
from crossway.inference import set_threads
from crossway.quantize import QUANTIZE
from crossway.training.checkpoint import ENGINES, LoadedModel, load_config, load_models

if TYPE_CHECKING:
    from crossway.server_caption import CaptionEngine
    from crossway.server_segment import SegmentEngine
    from crossway.server_speech import SpeechEngine
    from crossway.server_text import TextEngine

log = logging.getLogger("crossway.server")
AnyEngine = "TextEngine | SegmentEngine | CaptionEngine | SpeechEngine"  # what load_engine returns (a type alias)
MIN_TILE = 64  # smallest tile a request may ask for; with overlap <= tile / 2 tiles cover a pixel at most 4 times
MIN_TIMEOUT_S = 0.1  # the shortest deadline a request may ask for (shorter ones are a 422, not a near-certain 504)
# 422s that a request valid by the OpenAPI schema can still get: limits that JSON Schema cannot state (tokens per
# input, the output length against the input's, n_best against beam_size); tests/test_contract.py holds them to it


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_000_000  # 413 above this, before the body is read
    max_inputs: int = 64  # inputs per request
    max_input_tokens: int = 0  # tokens per input; 0 = the model's data.max_src_len
    max_output_tokens: int = 512  # a * longest input + b may not exceed this (search stops at the model's positions)
    max_beam_size: int = 16
    max_queue: int = 64  # requests queued or decoding; 429 beyond
    max_batch_inputs: int = 64  # inputs per model call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    timeout_s: float = 30.0  # per-request deadline (a request may ask for less): 504 after it
    drain_timeout_s: float = 60.0  # SIGTERM: how long in-flight work may take before the server exits anyway
    threads: int = 0  # torch threads (of each model process); 0 = torch's choice
    workers: int = 1  # model processes (crossway.model_process), each with its batcher thread; 0 = no process:
    #                   the model runs on one thread of the server's own process
    checkpoint: str = "best"
    quantize: str = "none"  # none | int8 (crossway.quantize; with engine ctranslate2, its int8 compute type)
    engine: str = "torch"  # torch | ctranslate2 (text Transformers: crossway.ct2); a converted directory: ctranslate2
    decode: tuple[str, ...] = ()  # "decode.key=value": the server's default decoding options (requests override)
    rescore: tuple[str, ...] = ()  # runs (or graphone models) that rerank every n-best list (crossway.rerank)
    rescore_weights: tuple[float, ...] | None = None  # the searching model's, then one per rescorer (default: 1s)
    # image runs (segmentation, image_to_text)
    max_image_bytes: int = 20_000_000  # 413 above this (/v1/segment's and /v1/caption's body limit), before reading
    max_image_pixels: int = 16_777_216  # 413 above this declared width x height, before decoding (4096 x 4096)
    tile: int = 512  # the largest window segmented at once (memory): larger images go in tiles; 0 = whole images
    overlap: int = 32  # default overlap of neighbouring tiles (at most tile / 2)
    # speech runs
    max_audio_bytes: int = 25_000_000  # 413 above this (/v1/transcribe's body limit), before reading
    max_audio_seconds: float = 300.0  # 413 above this duration (from the file's header), before decoding

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"serve.workers must be >= 0, not {self.workers}")
        for name in ("max_body_bytes", "max_inputs", "max_output_tokens", "max_beam_size", "max_queue",
                     "max_batch_inputs", "max_image_bytes", "max_image_pixels", "max_audio_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be >= 1, not {getattr(self, name)}")
        if self.tile and self.tile < MIN_TILE or self.tile < 0:
            raise ValueError(f"serve.tile must be 0 (whole images) or >= {MIN_TILE}, not {self.tile}")
        if self.overlap < 0 or self.tile and self.overlap > self.tile // 2:
            raise ValueError(f"serve.overlap must be between 0 and tile / 2 = {self.tile // 2}, not {self.overlap}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"serve.quantize must be one of {list(QUANTIZE)}, not {self.quantize!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"serve.engine must be one of {list(ENGINES)}, not {self.engine!r}")
        if self.timeout_s <= 0 or self.max_audio_seconds <= 0 or self.batch_wait_ms < 0 or self.max_input_tokens < 0:
            raise ValueError("serve.timeout_s and max_audio_seconds must be > 0, batch_wait_ms and max_input_tokens "
                             ">= 0")
        if self.rescore_weights is not None and len(self.rescore_weights) != 1 + len(self.rescore):
            raise ValueError(f"serve.rescore_weights: {len(self.rescore_weights)} weights for "
                             f"{1 + len(self.rescore)} models (the searching model first, then each rescorer)")


ENDPOINTS = {"text": "POST /v1/translate", "segmentation": "POST /v1/segment",  # a run's task -> its endpoint
             "image_to_text": "POST /v1/caption", "speech": "POST /v1/transcribe"}


def _tasks() -> dict[str, tuple[type[TextEngine | SegmentEngine | CaptionEngine | SpeechEngine], Callable]]:
    """A run's task -> the engine that serves it and the function that adds its endpoint to an app. (Each task's
    half is imported here, not at the top: crossway.server_text, server_segment, server_caption and server_speech
    build on this module.)"""
    from crossway.server_caption import CaptionEngine, add_caption_route
    from crossway.server_segment import SegmentEngine, add_segment_route
    from crossway.server_speech import SpeechEngine, add_transcribe_route
    from crossway.server_text import TextEngine, add_translate_route

    return {"text": (TextEngine, add_translate_route), "segmentation": (SegmentEngine, add_segment_route),
            "image_to_text": (CaptionEngine, add_caption_route), "speech": (SpeechEngine, add_transcribe_route)}


def load_engine(run: str | Path, cfg: ServeConfig = ServeConfig(), weights: bool = True) -> AnyEngine:
    """The engine of the run's task, loaded with `cfg` (without weights: see crossway.model_process)."""
    task = load_config(run, cfg.checkpoint).task
    if task not in ENDPOINTS:
        raise ConfigError(f"{run} is a {task} run: nothing to serve (fine-tune it: crossway train CONFIG "
                          "train.init_from=RUN)")
    return _tasks()[task][0].load(run, cfg, weights)


def load_run(run: str | Path, cfg: ServeConfig, weights: bool = True) -> LoadedModel:
    """The run's model as a server uses it: `cfg`'s checkpoint, quantization and default decoding options."""
    loaded = load_models([run], cfg.checkpoint, cfg.engine, cfg.quantize, weights)
    if cfg.decode:
        config = dataclasses.replace(loaded.config, decode=decode_overrides(loaded.config.decode, list(cfg.decode)))
        loaded = dataclasses.replace(loaded, config=config)
    return loaded


def no_rescorers(run: str | Path, cfg: ServeConfig, task: str) -> None:
    """Rescorers score text sources: for a run of another task they are an error, not silently ignored."""
    if cfg.rescore or cfg.rescore_weights is not None:
        raise ConfigError(f"{run} is {'an' if task[0] in 'aeiou' else 'a'} {task} run; rescore and rescore weights "
                          "are for text runs only")


def check_task(loaded: LoadedModel, task: str) -> None:
    """An engine's check that the run it was given is of its task."""
    if loaded.config.task != task:
        raise ConfigError(f"{loaded.path} is {a_run(loaded.config.task)}; {_tasks()[task][0].__name__} serves "
                          f"{task} runs (load_engine picks the engine of a run's task)")


def a_run(task: str) -> str:
    """A run of `task` in messages: "a text run", "an image_to_text run"."""
    return f"{'an' if task[0] in 'aeiou' else 'a'} {task} run"


# --- request and response ---------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="e.g. image_too_large, invalid_image, wrong_task, queue_full")
    message: str
    limit: float | None = Field(None, description="the limit broken, when one was")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def openapi_errors(**codes: str) -> dict:
    """OpenAPI `responses` entries: status -> what it means, each with the JSON error body."""
    return {int(k[1:]): {"model": ErrorResponse, "description": v} for k, v in codes.items()}


class RequestError(Exception):
    """An answer other than 200: the status, a code and a message, as JSON ({"error": {...}})."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def __reduce__(self):  # a model process (crossway.model_process) sends these back
        return _request_error, (self.status, self.code, self.message, self.extra)


def _request_error(status: int, code: str, message: str, extra: dict) -> RequestError:
    return RequestError(status, code, message, **extra)


def _error(status: int, code: str, message: str, **extra) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


def json_response(body, status: int = 200) -> Response:
    """`body` as a JSON response, encoded here (orjson when installed): FastAPI's own encoding of a returned dict
    (jsonable_encoder, then json.dumps) costs more than the rest of a small request's handling."""
    return Response(_dumps(body), status_code=status, media_type="application/json")


try:
    import orjson

    def _dumps(body) -> bytes:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # the standard library's, as compact
    def _dumps(body) -> bytes:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


# --- the app ------------------------------------------------------------------------------------------------
class ServerState:
    def __init__(self):
        self.status = "loading"  # loading | ready | draining | failed
        self.error: str | None = None
        self.engine: AnyEngine | None = None
        self.batcher: MicroBatcher | None = None
        self.inflight = 0  # translate, segment and caption requests being handled

    def idle(self) -> bool:
        return self.inflight == 0 and (self.batcher is None or self.batcher.pending == 0)

    def ready_engine(self, task: str | None = None) -> AnyEngine:
        """The engine, if ready (503 otherwise); with `task`, only if it serves that task (404 naming the endpoint
        that does: the route exists, but not for this server's run, as OpenAI answers a chat model on
        /v1/completions)."""
        if self.status != "ready" or self.engine is None:
            msg = {"loading": "the model is still loading", "draining": "the server is shutting down",
                   "failed": f"the model failed to load: {self.error}"}.get(self.status, self.status)
            raise RequestError(503, f"not_ready_{self.status}", msg)
        engine = self.engine
        if task is not None and engine.task != task:
            raise RequestError(404, "wrong_task", f"this server serves {engine.name}, {a_run(engine.task)}: send "
                               f"its requests to {ENDPOINTS[engine.task]} ({ENDPOINTS[task]} is for {task} runs)",
                               task=engine.task, endpoint=ENDPOINTS[engine.task])
        return engine

    async def submit(self, inputs: list, key, timeout: float) -> list:
        """The engine's outputs for `inputs` from the batcher: 429 at once when its queue is full, 504 at
        `timeout`."""
        try:
            return await self.batcher.submit(inputs, key, timeout)
        except QueueFull as e:
            raise RequestError(429, "queue_full", f"server busy: {e}", limit=self.batcher.max_queue) from None
        except DeadlineExceeded:
            raise RequestError(504, "deadline_exceeded", f"no result within the deadline of {timeout:g} s",
                               limit=timeout) from None
        except ConfigError as e:  # options the model cannot decode with (jobs share a call only with equal options)
            raise RequestError(422, "invalid_options", str(e), field="options") from None


def create_app(load: Callable[[], AnyEngine], cfg: ServeConfig = ServeConfig()):
    """The FastAPI app, with every task's endpoint (a run of another task answers 404). `load` runs on a
    background thread after start-up; readiness waits for it."""
    state = ServerState()

    def load_model() -> None:
        try:
            set_threads(cfg.threads)
            engine = load()
            engine.warm_up()
            state.engine = engine
            state.batcher = MicroBatcher(engine.run_batch, cfg.max_queue, cfg.max_batch_inputs,
                                         cfg.batch_wait_ms / 1000, workers=max(1, cfg.workers))
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
        if hasattr(state.engine, "close"):  # model processes
            state.engine.close()

    app = FastAPI(title="crossway", version=__version__, lifespan=lifespan,
                  description="Encoder-decoder models: translate, transliterate, convert graphemes to phonemes; "
                              "segment images (U-Net, Attention U-Net); caption images or read text lines "
                              "(Show, Attend and Tell); transcribe or translate speech (Whisper-style, LAS). A server "
                              "serves one run: GET /v1/info says its task and so which of /v1/translate, /v1/segment, "
                              "/v1/caption and /v1/transcribe answers.")
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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # a body FastAPI cannot parse (not UTF-8): as malformed JSON is, a 422
            return _error(422, "invalid_request", f"body: {exc.detail} (send a UTF-8 JSON object)", field="body")
        return _error(exc.status_code, {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http"),
                      str(exc.detail))

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

    @app.get("/health/ready", responses={503: {"description": "loading, draining or failed (with the reason): "
                                                              '{"status": ..., "error": ...}'}})
    async def ready():
        body = {"status": state.status}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/v1/info", responses=openapi_errors(e503="not_ready_loading, not_ready_draining, not_ready_failed"))
    async def info():
        engine = state.ready_engine()
        return {**engine.info(), "limits": engine.limits(cfg)}

    @app.get("/v1/stats")
    async def stats():
        b = state.batcher
        return {"status": state.status, "inflight": state.inflight,
                "queue": None if b is None else {"pending": b.pending, **dataclasses.asdict(b.stats)}}

    for _, add_route in _tasks().values():
        add_route(app, state, cfg)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("crossway").joinpath("web/index.html").read_text(encoding="utf-8"))

    return BodyLimit(app, cfg.max_body_bytes, {"/v1/segment": cfg.max_image_bytes, "/v1/caption": cfg.max_image_bytes,
                                               "/v1/transcribe": cfg.max_audio_bytes})


# --- body size -----------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length before reading anything, or as soon
    as a streamed (chunked) body passes the limit. Bodies under the limit are read here and handed on whole."""

    def __init__(self, app, max_bytes: int, paths: dict[str, int] | None = None):
        """`paths`: other limits for some paths (images are larger than JSON bodies). A valid `POST /v1/translate`
        body goes from here to the route's own handler (`app.state.translate_fast_path`), past FastAPI's request
        machinery (its middleware layers, dependency injection and body parsing cost more than the rest of a small
        request); any other request, an invalid translate body included, goes to the FastAPI app."""
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})
        self.state = app.state.crossway  # tests and `serve` reach the server state through the wrapper
        self.fast_path = getattr(app.state, "translate_fast_path", None)

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
        if self.fast_path is not None and scope["path"] == "/v1/translate" and _is_json(scope):
            response = await self.fast_path(body)
            if response is not None:
                return await response(scope, receive, send)

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


def _is_json(scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


# --- running it -----------------------------------------------------------------------------------------------
def serve(run: str | Path, cfg: ServeConfig = ServeConfig(), log_level: str = "info") -> None:
    """Serve the model in `run` until SIGTERM/SIGINT, then drain (see the module docstring)."""
    for path in (run, *cfg.rescore):
        if not Path(path).exists():
            raise CrosswayError(f"{path}: no such model directory")
    # a bad decoding option, options that give the rescorers no n-best list, or options the run's task cannot use
    # fail here, before the server starts
    config = load_config(run, cfg.checkpoint)
    _tasks()[config.task][0].check_options(run, config, cfg)
    if cfg.workers:
        from crossway.model_process import ProcessEngine  # builds on this module

        app = create_app(lambda: ProcessEngine(run, cfg), cfg)
    else:
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
