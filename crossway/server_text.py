"""Serving text runs: `POST /v1/translate`, its request and response schemas, and the engine that decodes a batch
of texts (crossway.server.create_app adds the route to every server; a run of another task answers 404).

Request flow (after crossway.server's body-size guard): the JSON schema (422; a valid body skips FastAPI's request
machinery through `app.state.translate_fast_path`) -> `_check`, the limits the schema cannot state (422 naming the
limit) -> the micro-batcher, keyed by the decoding options -> one `crossway.translate` call for the texts that
share them -> one output per input, with its n-best alternatives and attention when asked.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crossway.config import RunConfig, decode_overrides
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError
from crossway.graphone import is_graphone
from crossway.inference import Translation, translate
from crossway.quantize import quantize
from crossway.rerank import Rescorer, check_rerank, load_rescorer
from crossway.server import (
    MIN_TIMEOUT_S,
    RequestError,
    ServeConfig,
    ServerState,
    _error,
    check_task,
    json_response,
    load_run,
    log,
    openapi_errors,
)
from crossway.training.checkpoint import LoadedModel, load_checkpoint

UNSTATED_LIMITS = ("input_too_long", "output_too_long", "invalid_options")


class TextEngine:
    """A loaded text run and what the server needs to know about it."""

    task = "text"

    def __init__(self, loaded: LoadedModel, name: str, rescorers: Sequence[Rescorer] = (),
                 weights: Sequence[float] | None = None):
        """`rescorers` rerank every n-best list (weights: the searching model's, then one per rescorer), so the
        model's decoding options must give one (crossway.rerank.check_rerank), and so must every request's."""
        check_task(loaded, self.task)
        check_rerank(loaded.config.decode, rescorers)
        self.loaded, self.name = loaded, name
        self.attention = {"layers": 0, "heads": 0}  # what the model returns, seen by warm_up
        self.check_decode(loaded.config.decode)  # an engine without the run's default options fails at start
        self.rescorers, self.weights = list(rescorers), None if weights is None else list(weights)
        cfg = loaded.config
        self.max_src_len = cfg.data.max_src_len

    @classmethod
    def load(cls, run: str | Path, cfg: ServeConfig = ServeConfig(), weights: bool = True) -> TextEngine:  # noqa: B008
        """The model in `run` with `cfg`'s checkpoint choice, quantization, default decoding options and
        rescorers (loaded alike). `weights=False`: no weights (crossway.model_process's HTTP side)."""

        def rescorer(path):  # a run, quantized alike, or a graphone model (no weights to quantize)
            r = load_rescorer(path, cfg.checkpoint) if weights or is_graphone(path) else \
                load_checkpoint(path, cfg.checkpoint, weights=False)
            return dataclasses.replace(r, model=quantize(r.model, cfg.quantize)) if weights and isinstance(
                r, LoadedModel) else r

        return cls(load_run(run, cfg, weights), Path(run).name, [rescorer(r) for r in cfg.rescore],
                   cfg.rescore_weights)

    @classmethod
    def check_options(cls, run: str | Path, config: RunConfig, cfg: ServeConfig) -> None:
        """`serve`'s check before the server starts: a bad decoding option, or options that give the rescorers
        no n-best list."""
        check_rerank(decode_overrides(config.decode, list(cfg.decode)), cfg.rescore)

    def run_batch(self, texts: list[str], key) -> list[Translation]:
        """The batcher's model call: texts that share a key share their decoding options, key[1]."""
        return self.translate(texts, key[1])

    def check_decode(self, dcfg: DecodeConfig) -> None:
        """The engine's own check of decoding options (CTranslate2 lacks some): a ConfigError naming them."""
        check = getattr(self.loaded.model, "check_options", None)
        if check is not None:
            check(dcfg)

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
               "attention": self.attention, "engine": getattr(self.loaded.model, "engine", "torch")}
        if self.rescorers:
            out["rescore"] = {"models": [str(r.path) for r in self.rescorers],
                              "weights": self.weights or [1.0] * (1 + len(self.rescorers))}
        return out

    def warm_up(self) -> None:
        """One decode, with attention when the engine can return it: what it returns sets `attention` (the web
        page's layer and head choices; layers 0 for a model without attention)."""
        sample = self.loaded.src.tokenizer.detokenize(self.loaded.src.vocab.itos[4:9])
        dcfg = dataclasses.replace(self.loaded.config.decode, return_attention=True)
        try:
            self.check_decode(dcfg)
        except ConfigError:  # an engine that returns no attention
            dcfg = self.loaded.config.decode
        self.attention = attention_kind(self.translate([sample], dcfg)[0].attention)


def attention_kind(attention) -> dict:
    """A translation's attention (T, S), (T, H, S) or (T, L, H, S), or None -> its decoder layers and heads."""
    if attention is None:
        return {"layers": 0, "heads": 0}
    shape = list(attention.shape[1:-1])  # [], [H] or [L, H]
    return {"layers": shape[0] if len(shape) == 2 else 1, "heads": shape[-1] if shape else 1}


class DecodeOptions(BaseModel):
    """Overrides of the model's decoding options (see DecodeConfig); unset ones keep the model's values."""
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: `true` is no number, as the schema says
    strategy: Literal["greedy", "beam", "sample"] | None = None
    beam_size: int | None = Field(None, ge=1)
    n_best: int | None = Field(None, ge=1)
    length_penalty: float | None = Field(None, ge=0, le=10)
    coverage_penalty: float | None = Field(None, ge=0, le=10, description="beam: GNMT's coverage penalty beta (0 "
                                           "= off); a model without attention answers 422 invalid_options")
    max_len_a: float | None = Field(None, ge=0, le=100)
    max_len_b: int | None = Field(None, ge=0)
    min_len: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2 ** 63)
    no_repeat_ngram: int | None = Field(None, ge=0, le=10)

    @field_validator("beam_size", "n_best", "max_len_b", "min_len", "top_k", "seed", "no_repeat_ngram", mode="before")
    @classmethod
    def _integral(cls, value):
        """JSON Schema's integers include 3.0; strict validation alone would refuse it."""
        return int(value) if type(value) is float and value.is_integer() else value


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: list[str] = Field(min_length=1, description="texts to translate, each with a character other than "
                              "whitespace")
    options: DecodeOptions = Field(default_factory=DecodeOptions)
    return_attention: bool = False
    timeout_s: float | None = Field(None, ge=MIN_TIMEOUT_S, description="deadline in seconds; a larger one than "
                                    "the server's (GET /v1/info: limits.timeout_s) is cut to the server's")


class Attention(BaseModel):
    src_tokens: list[str]
    tgt_tokens: list[str] = Field(description="the output tokens, and the end token when it was produced")
    shape: list[int] = Field(description="(T, S) for the RNNs, (T, L, H, S) for the Transformer")
    weights: list[list[float]] = Field(description="one row per output token, flattened (L x H x S)")


class Output(BaseModel):
    text: str
    tokens: list[str]
    score: float = Field(description="log-probability (beam: over the length penalty)")
    finished: bool = Field(description="ended with the end token (not cut at the output limit)")
    attention: Attention | None = Field(None, description="with return_attention; null for a model without any")
    alternatives: list[Output] | None = Field(None, description="the rest of the n-best list (options.n_best > 1)")


class TranslateResponse(BaseModel):
    model: str = Field(description="the served run's name")
    outputs: list[Output] = Field(description="one per input, in order")
    time_ms: float


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


def _with_limits(openapi: Callable[[], dict], cfg: ServeConfig) -> Callable[[], dict]:
    """The app's OpenAPI document with this server's limits in the request schema (and enforced by `_check`)."""

    def document() -> dict:
        doc = openapi()  # FastAPI builds it once and keeps it
        schemas = doc["components"]["schemas"]
        inputs = schemas["TranslateRequest"]["properties"]["inputs"]
        inputs["maxItems"] = cfg.max_inputs
        inputs["items"].update(minLength=1, pattern=r"\S")
        options = schemas["DecodeOptions"]["properties"]
        for name, limit in (("beam_size", cfg.max_beam_size), ("n_best", cfg.max_beam_size),
                            ("max_len_b", cfg.max_output_tokens), ("min_len", cfg.max_output_tokens)):
            next(s for s in options[name]["anyOf"] if s.get("type") == "integer")["maximum"] = limit
        return doc

    return document


def add_translate_route(app: FastAPI, state: ServerState, cfg: ServeConfig) -> None:
    """`POST /v1/translate` on `app` (create_app adds it to every server: a run of another task answers 404)."""
    sample_ids = itertools.count()  # sampling requests are never batched together: seeded sampling depends on it
    app.openapi = _with_limits(app.openapi, cfg)

    @app.post("/v1/translate", summary="Translate texts (text runs)", response_model=None,
              description="The schema states every limit it can (GET /v1/info: limits). Three it cannot state are "
                          f"checked here, each a 422 naming the limit: {', '.join(UNSTATED_LIMITS)} (tokens per "
                          "input; max_len_a x the longest input's tokens + max_len_b, and min_len, against "
                          "max_output_tokens; n_best at most beam_size), and the body's bytes (413).",
              responses={200: {"model": TranslateResponse, "description": "one output per input"},
                         **openapi_errors(
                  e404="wrong_task: this server serves a run of another task (the error names its endpoint)",
                  e413="body_too_large: over max_body_bytes, refused before it is read",
                  e422="invalid_request, too_many_inputs, empty_input, input_too_long, beam_too_large, "
                       "output_too_long, invalid_options",
                  e429="queue_full: refused at once", e503="not_ready_loading, not_ready_draining, not_ready_failed, "
                  "model_restarting", e504="deadline_exceeded")})
    async def translate_route(req: TranslateRequest, engine: Annotated[TextEngine, Depends(_text_engine)]):
        return await translate_request(req, engine)

    async def translate_request(req: TranslateRequest, engine: TextEngine) -> Response:
        state.inflight += 1
        try:
            dcfg, timeout = _check(req, engine, cfg)
            t0 = time.perf_counter()
            key = ("translate", dcfg, next(sample_ids) if dcfg.strategy == "sample" else None)
            outs = await state.submit(req.inputs, key, timeout)
            results = []
            for t in outs:
                item = output_json(t, req.return_attention)
                if t.alternatives:
                    item["alternatives"] = [output_json(a, req.return_attention) for a in t.alternatives]
                results.append(item)
            return json_response({"model": engine.name, "outputs": results,
                                  "time_ms": round(1000 * (time.perf_counter() - t0), 2)})
        finally:
            state.inflight -= 1

    async def fast_path(body: bytes) -> Response | None:
        """The response to a body that is a valid request, or None (FastAPI answers it, as the route does)."""
        try:
            req = TranslateRequest.model_validate_json(body)
        except ValidationError:
            return None
        try:
            return await translate_request(req, state.ready_engine("text"))
        except RequestError as e:
            return _error(e.status, e.code, e.message, **e.extra)
        except Exception as e:  # a bug: as the app's handler says it
            log.exception("unexpected error")
            return _error(500, "internal", f"{type(e).__name__}: {e}")

    app.state.translate_fast_path = fast_path


# the route's engine, as a dependency: FastAPI resolves it before it checks the request's body and parameters, so a
# server that is not ready (503) or serves another task (404) says so first (async: no thread-pool hop; module level:
# FastAPI resolves the string annotations of `from __future__ import annotations` in the module's namespace)
async def _text_engine(request: Request) -> TextEngine:
    return request.app.state.crossway.ready_engine("text")


def _limits(cfg: ServeConfig, engine: TextEngine) -> dict:
    return {"max_inputs": cfg.max_inputs, "max_input_tokens": cfg.max_input_tokens or engine.max_src_len,
            "max_output_tokens": cfg.max_output_tokens, "max_beam_size": cfg.max_beam_size,
            "max_body_bytes": cfg.max_body_bytes, "timeout_s": cfg.timeout_s}


def _check(req, engine: TextEngine, cfg: ServeConfig) -> tuple[DecodeConfig, float]:
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
    try:
        engine.check_decode(dcfg)
    except ConfigError as e:
        raise RequestError(422, "invalid_options", str(e), field="options") from None
    if dcfg.beam_size > cfg.max_beam_size:  # whatever the strategy: the schema's maximum
        raise RequestError(422, "beam_too_large", f"options.beam_size={dcfg.beam_size} is over the limit of "
                           f"{cfg.max_beam_size}", field="options.beam_size", limit=cfg.max_beam_size)
    max_out = int(longest * dcfg.max_len_a) + dcfg.max_len_b
    if max_out > limits["max_output_tokens"] or dcfg.min_len > max_out:
        raise RequestError(422, "output_too_long", f"max_len_a * {longest} + max_len_b = {max_out} output tokens "
                           f"(min_len {dcfg.min_len}); the limit is {limits['max_output_tokens']} and min_len may "
                           f"not exceed it", field="options", limit=limits["max_output_tokens"])
    timeout = min(req.timeout_s or cfg.timeout_s, cfg.timeout_s)
    return dcfg, timeout
