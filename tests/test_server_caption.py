"""POST /v1/caption against real sockets on 127.0.0.1 (httpx): captions, n-best lists and attention maps equal to
the library's (LSTM and Transformer decoders), images read as files are, every limit's status code and JSON error,
wrong-task answers both ways, concurrent uploads sharing model calls, readiness, queue and deadline, /v1/info and
the OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from crossway import caption, load_checkpoint, train
from crossway.cli import main
from crossway.config import RunConfig
from crossway.data.scenes import generate_scenes
from crossway.errors import ConfigError
from crossway.server import ServeConfig, create_app, load_engine
from crossway.server_caption import CaptionEngine
from crossway.server_text import TextEngine
from tests.servers import running, train_run, wait_ready
from tests.test_server_segment import encoded, error_of, png_declaring

SAT = {"arch": "sat", "dim": 32, "base_channels": 8, "embed_dim": 16, "hidden": 32, "attn_dim": 16, "stages": 2,
       "heads": 2, "dec_layers": 2, "ff_dim": 32}


def train_caption_run(root: Path, decoder: str = "lstm", steps: int = 10) -> Path:
    """A Show-Attend-Tell run (32 x 32 scenes, an 8 x 8 grid) trained for a few steps on root's scenes."""
    if not (root / "train.tsv").exists():
        generate_scenes(root, n_train=60, n_valid=10, n_test=5, size=32, seed=3)
    train(RunConfig.from_dict({
        "task": "image_to_text",
        "data": {"train": str(root / "train.tsv"), "valid": str(root / "valid.tsv"), "height": 32, "width": 32,
                 "batch_size": 16},
        "model": {**SAT, "decoder": decoder},
        "train": {"out_dir": str(root / decoder), "max_steps": steps, "threads": 1, "progress": False},
        "decode": {"max_len_a": 0, "max_len_b": 12}}))
    return root / decoder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """SAT runs with an LSTM and a Transformer decoder, a text run (RNN), and the scenes' test images plus a
    64 x 32 picture the model resizes to 32 x 32."""
    root = tmp_path_factory.mktemp("capserve")
    lstm, transformer = train_caption_run(root, "lstm"), train_caption_run(root, "transformer")
    images = sorted((root / "images").glob("test_*.png"))
    a, b = (np.array(Image.open(p)) for p in images[:2])
    Image.fromarray(np.concatenate([a, b], 1)).save(root / "wide.png")  # (32, 64, 3)
    return {"lstm": lstm, "transformer": transformer, "text": train_run(root, "rnn", steps=5), "images": images,
            "wide": root / "wide.png"}


@pytest.fixture(scope="module")
def loaded(runs):
    return {d: load_checkpoint(runs[d]) for d in ("lstm", "transformer")}


@pytest.fixture(scope="module")
def client(runs):
    cfg = ServeConfig(max_image_bytes=50_000, batch_wait_ms=50, max_beam_size=8)
    with running(create_app(lambda: load_engine(runs["lstm"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def clients(runs, client):
    with running(create_app(lambda: load_engine(runs["transformer"]))) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        yield {"lstm": client, "transformer": c}


def post(client, body: bytes, ctype: str = "image/png", **params) -> httpx.Response:
    return client.post("/v1/caption", content=body, params=params, headers={"content-type": ctype})


def library(loaded, images, **options):
    cfg = dataclasses.replace(loaded.config.decode, **options)
    return caption(loaded.model, loaded.src, loaded.tgt, images, cfg)


def same(out: dict, want) -> None:
    assert (out["text"], out["tokens"], out["finished"]) == (want.text, want.tokens, want.finished)
    assert out["score"] == pytest.approx(want.score, abs=1e-5)


# --- outputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_greedy_captions_and_attention_equal_the_library(clients, runs, loaded, decoder):
    paths = [*runs["images"], runs["wide"]]
    want = library(loaded[decoder], paths, return_attention=True)
    for path, w in zip(paths, want, strict=True):
        r = post(clients[decoder], path.read_bytes(), attention="true")
        assert r.status_code == 200, r.text
        out = r.json()
        same(out, w)
        assert out["model"] == decoder and out["alternatives"] == [] and out["grid"] == [8, 8]
        assert out["format"] == "PNG" and out["time_ms"] > 0
        att = w.attention if decoder == "lstm" else w.attention[:, -1].mean(1)  # (T, h, w): last layer, mean
        maps = np.array(out["attention"])
        assert maps.shape == (len(w.tokens) + w.finished, 8, 8)  # a map per token, then the end token's
        assert np.abs(maps - att.numpy()).max() <= 1e-4
        assert np.allclose(maps.sum((1, 2)), 1, atol=1e-2)  # each is a distribution over the grid
    assert (out["width"], out["height"]) == (64, 32)
    plain = post(clients[decoder], paths[0].read_bytes()).json()
    assert "attention" not in plain and plain["grid"] == [8, 8]  # the maps only when asked
    same(plain, library(loaded[decoder], paths[:1])[0])  # without attention in the library: the same caption


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_beam_nbest_equals_the_library(clients, runs, loaded, decoder):
    path = runs["images"][1]
    r = post(clients[decoder], path.read_bytes(), strategy="beam", beam_size=4, n_best=3, length_penalty=0.5)
    assert r.status_code == 200, r.text
    out = r.json()
    (want,) = library(loaded[decoder], [path], strategy="beam", beam_size=4, n_best=3, length_penalty=0.5)
    same(out, want)
    assert len(out["alternatives"]) == 2
    for got, w in zip(out["alternatives"], want.alternatives, strict=True):
        same(got, w)


@pytest.mark.parametrize("fmt,ctype,mode", [("JPEG", "image/jpeg", "RGB"), ("TIFF", "image/tiff", "RGB"),
                                            ("BMP", "image/bmp", "RGB"), ("PNG", "image/png", "L"),
                                            ("PNG", "image/png", "RGBA"), ("PNG", "", "RGB")])
def test_formats_are_read_as_the_library_reads_files(client, runs, loaded, tmp_path, fmt, ctype, mode):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.open(runs["wide"]).convert(mode).save(path, format=fmt)
    r = post(client, path.read_bytes(), ctype)
    assert r.status_code == 200, r.text
    assert r.json()["format"] == fmt
    same(r.json(), library(loaded["lstm"], [path])[0])


def test_concurrent_uploads_share_model_calls_and_keep_their_outputs(client, runs):
    bodies = [p.read_bytes() for p in runs["images"]] + [runs["wide"].read_bytes(), encoded(np.full((20, 30, 3), 90,
                                                                                                    np.uint8))]
    asks = [{"attention": str(i % 2 == 0).lower()} for i in range(len(bodies))]  # mixed: they batch all the same
    single = [post(client, b, **a).json() for b, a in zip(bodies, asks, strict=True)]
    calls_before = client.get("/v1/stats").json()["queue"]["calls"]

    async def together():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/caption", content=b, params=a)
                                          for b, a in zip(bodies, asks, strict=True)))

    batched = [r.json() for r in asyncio.run(together())]
    calls = client.get("/v1/stats").json()["queue"]["calls"] - calls_before
    assert calls < len(bodies)  # they really shared model calls
    for s, b in zip(single, batched, strict=True):
        assert (s["text"], s.get("attention") is None) == (b["text"], b.get("attention") is None)
        assert s["score"] == pytest.approx(b["score"], abs=1e-4)
        if "attention" in s:
            assert np.abs(np.array(s["attention"]) - np.array(b["attention"])).max() <= 2e-4


def test_a_corrupt_image_fails_alone_in_its_batch(client, runs):
    good = [p.read_bytes() for p in runs["images"][:3]]
    corrupt = png_declaring(200, 200)  # a readable header (checked on the event loop), pixels that are not there
    bodies = [good[0], corrupt, *good[1:]]

    async def together():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/caption", content=b) for b in bodies))

    results = asyncio.run(together())
    assert "truncated or corrupt PNG" in error_of(results[1], 422, "invalid_image")["message"]
    for r, body in zip([results[0], *results[2:]], good, strict=True):
        assert r.status_code == 200 and r.json()["text"] == post(client, body).json()["text"]


# --- limits and bad input ---------------------------------------------------------------------------------------
def test_oversized_bodies_and_declared_pixels_are_413(client):
    assert error_of(post(client, b"\0" * 50_001), 413, "body_too_large")["limit"] == 50_000
    t0 = time.monotonic()
    err = error_of(post(client, png_declaring(10_000, 10_000)), 413, "image_too_large")
    assert time.monotonic() - t0 < 1.0  # refused from the header, before decoding
    assert (err["width"], err["height"], err["limit"]) == (10_000, 10_000, 16_777_216)


def test_bad_images_are_422_and_non_images_415(client, runs):
    good = runs["images"][0].read_bytes()
    for body, code, words in [(b"", "invalid_image", "empty body"),
                              (b"not an image at all", "invalid_image", "not a PNG, JPEG, TIFF or BMP"),
                              (good[: len(good) // 2], "invalid_image", "truncated or corrupt PNG"),
                              (encoded(np.zeros((8, 8, 3), np.uint8), "GIF"), "invalid_image", "not a PNG"),
                              (encoded(Image.fromarray(np.zeros((8, 8), np.uint16)).convert("I;16")),
                               "unsupported_image", "16-bit")]:
        assert words in error_of(post(client, body), 422, code)["message"]
    for ctype in ("application/json", "multipart/form-data; boundary=x", "image/gif"):
        err = error_of(post(client, good, ctype), 415, "unsupported_media_type")
        assert "--data-binary" in err["message"]


@pytest.mark.parametrize("params,code,field", [
    ({"strategy": "sample"}, "invalid_request", "query.strategy"),
    ({"beam_size": 0}, "invalid_request", "query.beam_size"),
    ({"attention": "perhaps"}, "invalid_request", "query.attention"),
    ({"length_penalty": 11}, "invalid_request", "query.length_penalty"),
    ({"strategy": "beam", "beam_size": 9}, "beam_too_large", "beam_size"),  # the server's max_beam_size is 8
    ({"strategy": "beam", "beam_size": 2, "n_best": 3}, "invalid_options", "n_best"),
    ({"n_best": 2}, "invalid_options", "n_best"),  # greedy finds one caption
    ({"max_len_b": 100_000}, "output_too_long", "max_len_b"),
    ({"beam": 4}, "invalid_request", "beam"),  # a misspelt option is not silently ignored
])
def test_bad_options_are_422_naming_the_parameter(client, runs, params, code, field):
    err = error_of(post(client, runs["images"][0].read_bytes(), **params), 422, code)
    assert err["field"] == field, err


def test_each_task_answers_on_its_own_endpoint_only(client, runs):
    err = error_of(client.post("/v1/translate", json={"inputs": ["abc"]}), 404, "wrong_task")
    assert "an image_to_text run" in err["message"] and err["endpoint"] == "POST /v1/caption"
    error_of(client.post("/v1/segment", content=runs["images"][0].read_bytes()), 404, "wrong_task")
    with running(create_app(lambda: load_engine(runs["text"]))) as url, httpx.Client(base_url=url, timeout=60) as text:
        wait_ready(text)
        for params in ({}, {"strategy": "sample"}):  # the task is checked first: a bad option does not hide it
            err = error_of(post(text, runs["images"][0].read_bytes(), **params), 404, "wrong_task")
            assert "a text run" in err["message"] and err["endpoint"] == "POST /v1/translate"
    with pytest.raises(ConfigError, match="is an image_to_text run; TextEngine serves text runs"):
        TextEngine.load(runs["lstm"])
    with pytest.raises(ConfigError, match="is a text run; CaptionEngine serves image_to_text runs"):
        CaptionEngine.load(runs["text"])


def test_info_and_openapi_describe_the_endpoint(client):
    info = client.get("/v1/info").json()
    assert (info["task"], info["arch"], info["decoder"]) == ("image_to_text", "sat", "lstm")
    assert (info["channels"], info["height"], info["width"]) == (3, 32, 32)
    assert info["decode"]["max_len_b"] == 12
    assert info["limits"] == {"max_body_bytes": 50_000, "max_image_pixels": 16_777_216,
                              "content_types": ["image/png", "image/jpeg", "image/tiff", "image/bmp"],
                              "max_beam_size": 8, "max_output_tokens": 512, "timeout_s": 30.0}
    op = client.get("/openapi.json").json()["paths"]["/v1/caption"]["post"]
    assert "Caption an image" in op["summary"]
    assert {"image/png", "image/jpeg", "image/tiff", "image/bmp"} <= set(op["requestBody"]["content"])
    assert set(op["responses"]) == {"200", "404", "413", "415", "422", "429", "503", "504"}
    assert {p["name"] for p in op["parameters"]} == {"strategy", "beam_size", "n_best", "length_penalty", "max_len_b",
                                                     "attention", "timeout_s"}


# --- readiness, queue, deadline, draining --------------------------------------------------------------------------
class HeldCaptionEngine(CaptionEngine):
    """The real model, whose calls after the warm-up wait until `release` is set."""

    release: threading.Event
    warmed = False

    def warm_up(self):
        super().warm_up()
        self.warmed = True

    def caption(self, images, cfg):
        if self.warmed:
            self.release.wait(60)
        return super().caption(images, cfg)


def test_ready_after_a_warm_up_caption_then_deadline_queue_full_and_draining(runs):
    gate, release, engines = threading.Event(), threading.Event(), []

    def load():
        gate.wait(30)
        engines.append(HeldCaptionEngine.load(runs["lstm"]))
        engines[0].release = release
        return engines[0]

    body = runs["images"][0].read_bytes()
    app = create_app(load, ServeConfig(max_queue=1, batch_wait_ms=0))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        error_of(post(client, body), 503, "not_ready_loading")
        gate.set()
        wait_ready(client)
        assert engines[0].warmed  # ready only after the warm-up caption
        try:
            err = error_of(post(client, body, timeout_s=0.3), 504, "deadline_exceeded")
            assert err["limit"] == 0.3 and client.get("/v1/stats").json()["queue"]["pending"] == 0
            result = {}
            waiting = threading.Thread(target=lambda: result.update(r=post(client, body)))
            waiting.start()
            until = time.monotonic() + 30
            while client.get("/v1/stats").json()["queue"]["pending"] < 1 and time.monotonic() < until:
                time.sleep(0.01)
            assert error_of(post(client, body), 429, "queue_full")["limit"] == 1
            app.state.status = "draining"  # what SIGTERM does (DrainingServer.handle_exit)
            error_of(post(client, body), 503, "not_ready_draining")
        finally:
            release.set()
        waiting.join(60)
        assert result["r"].status_code == 200 and result["r"].json()["text"]


# --- crossway serve ---------------------------------------------------------------------------------------------
def test_serve_starts_an_image_to_text_run_and_refuses_text_options(runs, capsys, monkeypatch):
    started = []
    monkeypatch.setattr("crossway.server.DrainingServer.run", lambda self: started.append(self.config.app))
    assert main(["serve", "--model", str(runs["lstm"]), "decode.strategy=beam"]) == 0
    assert len(started) == 1  # past the checks, with the run's own engine and route
    for args, message in [(["--rescore", str(runs["text"])], "image_to_text run; rescore and rescore weights are "
                                                             "for text runs only"),
                          (["decode.beam_sizes=3"], "beam_sizes")]:
        assert main(["serve", "--model", str(runs["lstm"]), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
