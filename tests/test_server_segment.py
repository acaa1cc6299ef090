"""POST /v1/segment against real sockets on 127.0.0.1 (httpx): masks equal to the library's, JSON with overlay,
counts and gate maps, every limit's status code and JSON error (body bytes, declared pixels before decoding,
tiles), wrong-task answers both ways, readiness, queue and deadline, and /v1/info."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from crossway import TileConfig, load_checkpoint, segment_image, train
from crossway.cli import main
from crossway.data.images import load_image
from crossway.errors import ConfigError
from crossway.model_process import ProcessEngine
from crossway.segment import PALETTE, gate_maps, overlay
from crossway.server import ServeConfig, create_app, load_engine
from crossway.server_segment import SegmentEngine
from crossway.server_text import TextEngine
from tests.servers import running, train_run, wait_ready
from tests.tasks.test_segmentation import seg_config, write_easy_set


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A U-Net and an Attention U-Net (depth 2) trained for a few steps on 32 x 32 discs and squares, a text
    run (RNN), and a 96 x 160 picture made of fifteen of the training images."""
    root = tmp_path_factory.mktemp("segserve")
    write_easy_set(root / "train", 24, 1)
    write_easy_set(root / "valid", 4, 2)
    train(seg_config(root, root / "unet", train={"max_steps": 20}))
    train(seg_config(root, root / "attention", model={"attention_gates": True}, train={"max_steps": 20}))
    tiles = [np.array(Image.open(p)) for p in sorted((root / "train" / "images").iterdir())[:15]]
    Image.fromarray(np.concatenate([np.concatenate(tiles[r * 5: r * 5 + 5], 1) for r in range(3)], 0)).save(
        root / "big.png")  # (96, 160, 3)
    return {"unet": root / "unet", "attention": root / "attention", "text": train_run(root, "rnn"),
            "big": root / "big.png", "images": sorted((root / "train" / "images").iterdir())}


@pytest.fixture(scope="module")
def model(runs):
    return load_checkpoint(runs["unet"]).model


@pytest.fixture(scope="module")
def client(runs):
    cfg = ServeConfig(max_image_bytes=200_000, max_body_bytes=2_000)
    with running(create_app(lambda: load_engine(runs["unet"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def gated(runs):
    with running(create_app(lambda: load_engine(runs["attention"]))) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        yield c


def encoded(image: Image.Image | np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def segment(client, body: bytes, ctype: str = "image/png", **params) -> httpx.Response:
    return client.post("/v1/segment", content=body, params=params, headers={"content-type": ctype})


def png_array(data: bytes) -> tuple[np.ndarray, str]:
    im = Image.open(io.BytesIO(data))
    return np.array(im), im.mode


def error_of(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


def png_declaring(width: int, height: int) -> bytes:
    """A real 8 x 8 PNG (about 70 bytes) whose IHDR chunk is patched to declare width x height, CRC fixed."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8)))
    assert data[12:16] == b"IHDR"  # signature (8), length (4), type (4), then width and height
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# --- outputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,tiles", [({}, TileConfig()), ({"tile": 64, "overlap": 16}, TileConfig(tile=64,
                                                                                                        overlap=16))])
def test_png_in_mask_out_equals_the_library(client, runs, model, params, tiles):
    r = segment(client, runs["big"].read_bytes(), **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert (r.headers["x-crossway-width"], r.headers["x-crossway-height"]) == ("160", "96")
    mask, mode = png_array(r.content)
    want = segment_image(model, load_image(runs["big"]), tiles).numpy()
    assert mode == "P" and mask.shape == (96, 160)
    assert np.array_equal(mask, want) and len(np.unique(want)) > 1  # a real mask, not all background
    palette = Image.open(io.BytesIO(r.content)).getpalette()[:3 * len(PALETTE)]
    assert palette == [v for c in PALETTE for v in c]


def test_a_model_process_segments_as_the_library_does(runs, model):
    """`crossway serve`'s default: the model in its own process (crossway.model_process), for images as for text."""
    cfg = ServeConfig(workers=1, threads=1)
    with running(create_app(lambda: ProcessEngine(runs["unet"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c, timeout=120)
        r = segment(c, runs["big"].read_bytes())
        assert r.status_code == 200, r.text
        assert np.array_equal(png_array(r.content)[0], segment_image(model, load_image(runs["big"]),
                                                                     TileConfig()).numpy())
        bad = segment(c, b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a 422 raised in the model process reaches the client
        assert bad.status_code == 422 and bad.json()["error"]["code"], bad.text


@pytest.mark.parametrize("fmt,ctype,mode", [("JPEG", "image/jpeg", "RGB"), ("TIFF", "image/tiff", "RGB"),
                                            ("BMP", "image/bmp", "RGB"), ("PNG", "image/png", "L"),
                                            ("PNG", "image/png", "RGBA"), ("PNG", "image/png", "P"),
                                            ("PNG", "application/octet-stream", "RGB"), ("PNG", "", "RGB")])
def test_formats_and_channels_are_read_as_load_image_reads_files(client, runs, model, tmp_path, fmt, ctype, mode):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.open(runs["big"]).convert(mode).save(path, format=fmt)
    r = segment(client, path.read_bytes(), ctype, format="json", image="true")
    assert r.status_code == 200, r.text
    out = r.json()
    image = load_image(path, 3)  # what `crossway segment` reads from the file
    assert out["format"] == fmt and (out["width"], out["height"]) == (160, 96)
    assert np.array_equal(png_array(base64.b64decode(out["image_png"]))[0], image.permute(1, 2, 0).numpy())
    want = segment_image(model, image).numpy()
    assert np.array_equal(png_array(base64.b64decode(out["mask_png"]))[0], want)


def test_json_has_the_overlay_counts_and_classes(client, runs, model):
    r = segment(client, runs["big"].read_bytes(), format="json", alpha=0.3)
    assert r.status_code == 200, r.text
    out = r.json()
    image = load_image(runs["big"])
    mask = segment_image(model, image)
    assert (out["model"], out["tile"], out["overlap"]) == ("unet", 512, 32) and out["time_ms"] > 0
    assert "image_png" not in out and "gates" not in out
    counts = torch.bincount(mask.flatten(), minlength=3).tolist()
    assert out["classes"] == [{"id": i, "name": n, "color": "#{:02x}{:02x}{:02x}".format(*PALETTE[i]),
                               "pixels": counts[i]} for i, n in enumerate(["background", "disc", "square"])]
    assert sum(c["pixels"] for c in out["classes"]) == 96 * 160
    got, mode = png_array(base64.b64decode(out["overlay_png"]))
    assert mode == "RGB" and np.array_equal(got, overlay(image, mask, 0.3))
    assert np.array_equal(png_array(base64.b64decode(out["mask_png"]))[0], mask.numpy())


def test_images_of_different_sizes_together_each_get_their_own_mask(client, runs, model):
    big = np.array(Image.open(runs["big"]))
    crops = [big[:32, :32], big[:50, :77], big[10:96, 3:40], big[:1, :1]]

    async def together():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/segment", content=encoded(c)) for c in crops))

    for crop, r in zip(crops, asyncio.run(together()), strict=True):
        assert r.status_code == 200, r.text
        want = segment_image(model, torch.from_numpy(crop).permute(2, 0, 1).contiguous()).numpy()
        assert np.array_equal(png_array(r.content)[0], want)


def test_gate_maps_of_an_attention_unet(gated, runs):
    body = runs["big"].read_bytes()
    r = segment(gated, body, format="json", gates="true")
    assert r.status_code == 200, r.text
    gates = r.json()["gates"]
    want = gate_maps(load_checkpoint(runs["attention"]).model, load_image(runs["big"]))
    assert [g["level"] for g in gates] == [0, 1] and [g["downsample"] for g in gates] == [1, 2]  # depth 2
    for g, w in zip(gates, want, strict=True):
        arr, mode = png_array(base64.b64decode(g["png"]))
        assert mode == "L" and arr.shape == (96, 160) and arr.dtype == np.uint8
        assert np.abs(arr.astype(int) - (w * 255).round().numpy()).max() <= 1
        assert 0 <= g["min"] <= g["mean"] <= g["max"] <= 1 and g["max"] > g["min"]
        assert g["mean"] == pytest.approx(float(w.mean()), abs=1e-3)
    info = gated.get("/v1/info").json()
    assert info["gates"] == 2
    assert "gates" not in segment(gated, body, format="json").json()  # only when asked


def test_gates_are_refused_clearly(client, gated, runs):
    body = runs["big"].read_bytes()
    assert "without attention gates" in error_of(segment(client, body, format="json", gates="true"), 422,
                                                 "no_gates")["message"]
    assert "format=json" in error_of(segment(gated, body, gates="true"), 422, "invalid_options")["message"]
    wide = encoded(np.zeros((4, 600, 3), np.uint8))  # wider than the server's window (512): no whole-image pass
    err = error_of(segment(gated, wide, format="json", gates="true"), 422, "gates_image_too_large")
    assert err["limit"] == 512 and "600x4" in err["message"]


# --- limits and bad input ---------------------------------------------------------------------------------------
def test_oversized_body_is_413_before_it_is_read(client):
    err = error_of(segment(client, b"\0" * 200_001), 413, "body_too_large")
    assert err["limit"] == 200_000  # the image limit, not max_body_bytes (2,000)
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as s:  # announces 50 MB, sends 8 bytes: answered now
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 50000000\r\n\r\n\x89PNG\r\n\x1a\n")
        assert s.recv(4096).decode(errors="replace").startswith("HTTP/1.1 413")
    # JSON bodies keep their own limit on the same server
    error_of(client.post("/v1/translate", json={"inputs": ["a" * 3000]}), 413, "body_too_large")


@pytest.mark.parametrize("width,height", [(50_000, 50_000), (10_000, 10_000)])
def test_a_decompression_bomb_is_413_at_once_without_decoding(client, width, height):
    """50,000 x 50,000 is refused by Pillow's own guard (over twice its limit), 10,000 x 10,000 by the server's
    max_image_pixels (16,777,216): either way the 70-byte file's 300 MB to 7.5 GB of pixels are never allocated."""
    bomb = png_declaring(width, height)
    assert len(bomb) < 200
    before, t0 = rss_bytes(), time.monotonic()
    err = error_of(segment(client, bomb), 413, "image_too_large")
    assert time.monotonic() - t0 < 1.0
    assert rss_bytes() - before < 50_000_000
    assert err["limit"] == 16_777_216 and "refused before decoding" in err["message"]
    if width == 10_000:
        assert "10000x10000" in err["message"] and (err["width"], err["height"]) == (width, height)


def test_bad_images_are_422_naming_the_problem(client, runs):
    good = runs["big"].read_bytes()
    cases = [
        (b"", "invalid_image", "empty body"),
        (b"these are not the pixels you are looking for", "invalid_image", "not a PNG, JPEG, TIFF or BMP"),
        (good[: len(good) // 2], "invalid_image", "truncated or corrupt PNG"),
        (png_declaring(200, 200), "invalid_image", "truncated or corrupt PNG"),  # under the limit, IDAT of 8 x 8
        (encoded(np.zeros((8, 8, 3), np.uint8), "GIF"), "invalid_image", "not a PNG, JPEG, TIFF or BMP"),
        (encoded(Image.fromarray(np.zeros((8, 8), np.uint16)).convert("I;16")), "unsupported_image", "16-bit"),
        (good[:30], "invalid_image", "starts like a PNG image, but its header is truncated or corrupt"),
    ]
    for body, code, words in cases:
        assert words in error_of(segment(client, body), 422, code)["message"]


@pytest.mark.parametrize("params,code,field", [
    ({"tile": 10}, "tile_too_small", "tile"),
    ({"tile": 1024}, "tile_too_large", "tile"),  # over the server's window (512)
    ({"tile": 64, "overlap": 40}, "invalid_options", "overlap"),
    ({"format": "xml"}, "invalid_request", "query.format"),
    ({"alpha": 2}, "invalid_request", "query.alpha"),
    ({"tiles": 64}, "invalid_request", "tiles"),  # a misspelt option is not silently ignored
    ({"image": "true"}, "invalid_options", "format"),
])
def test_bad_options_are_422_naming_them(client, runs, params, code, field):
    err = error_of(segment(client, runs["big"].read_bytes(), **params), 422, code)
    assert err["field"] == field, err


def test_whole_images_over_the_servers_window_are_refused(client):
    wide = encoded(np.zeros((4, 600, 3), np.uint8))
    assert segment(client, wide).status_code == 200  # tiled by default
    err = error_of(segment(client, wide, tile=0), 422, "tile_too_large")
    assert "600x4" in err["message"] and err["limit"] == 512


@pytest.mark.parametrize("ctype", ["application/json", "multipart/form-data; boundary=x", "text/plain",
                                   "image/gif"])
def test_non_image_bodies_are_415_saying_what_to_send(client, runs, ctype):
    err = error_of(segment(client, runs["big"].read_bytes(), ctype), 415, "unsupported_media_type")
    assert "--data-binary" in err["message"] and "image/png" in err["message"]


def test_each_task_answers_on_its_own_endpoint_only(client, runs):
    err = error_of(client.post("/v1/translate", json={"inputs": ["abc"]}), 404, "wrong_task")
    assert "segmentation run" in err["message"] and "POST /v1/segment" in err["message"]
    app = create_app(lambda: load_engine(runs["text"]))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as text:
        wait_ready(text)
        assert text.get("/v1/info").json()["task"] == "text"
        for params in ({}, {"format": "xml"}):  # the task is checked first: a bad option does not hide it
            err = error_of(segment(text, runs["big"].read_bytes(), **params), 404, "wrong_task")
            assert "text run" in err["message"] and "POST /v1/translate" in err["message"]
            assert err["endpoint"] == "POST /v1/translate"
        assert text.post("/v1/translate", json={"inputs": ["abc"]}).status_code == 200
    with pytest.raises(ConfigError, match="is a segmentation run; TextEngine serves text runs"):
        TextEngine.load(runs["unet"])
    with pytest.raises(ConfigError, match="is a text run; SegmentEngine serves segmentation runs"):
        SegmentEngine.load(runs["text"])


def test_info_says_the_task_classes_and_limits(client):
    info = client.get("/v1/info").json()
    assert info["task"] == "segmentation" and info["arch"] == "unet" and info["channels"] == 3
    assert [c["name"] for c in info["classes"]] == ["background", "disc", "square"]
    assert info["classes"][1]["color"] == "#e6194b" and info["gates"] == 0
    assert info["limits"] == {"max_body_bytes": 200_000, "max_image_pixels": 16_777_216, "tile": 512,
                              "overlap": 32, "min_tile": 64, "content_types": ["image/png", "image/jpeg",
                                                                               "image/tiff", "image/bmp"],
                              "timeout_s": 30.0}


def test_openapi_describes_the_endpoint(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]
    assert "Segment an image" in op["summary"]
    assert {"image/png", "image/jpeg", "image/tiff", "image/bmp"} <= set(op["requestBody"]["content"])
    assert set(op["responses"]) == {"200", "404", "413", "415", "422", "429", "503", "504"}
    assert set(op["responses"]["200"]["content"]) == {"image/png", "application/json"}
    assert {p["name"] for p in op["parameters"]} == {"tile", "overlap", "format", "gates", "image", "alpha",
                                                     "timeout_s"}


# --- readiness, queue, deadline, draining --------------------------------------------------------------------------
class HeldSegmentEngine(SegmentEngine):
    """The real model, whose calls after the warm-up wait until `release` is set."""

    release: threading.Event
    warmed = 0

    def warm_up(self):
        super().warm_up()
        self.warmed += 1

    def segment(self, job):
        if self.warmed:
            self.release.wait(60)
        return super().segment(job)


def test_ready_after_a_warm_up_segmentation_then_queue_full_deadline_and_draining(runs):
    gate, release, engines = threading.Event(), threading.Event(), []

    def load():
        gate.wait(30)
        engines.append(HeldSegmentEngine.load(runs["unet"]))
        engines[0].release = release
        return engines[0]

    body = runs["big"].read_bytes()
    app = create_app(load, ServeConfig(max_queue=1, batch_wait_ms=0))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health/ready").json()["status"] == "loading"
        error_of(segment(client, body), 503, "not_ready_loading")
        gate.set()
        wait_ready(client)
        assert engines[0].warmed == 1  # ready only after the warm-up segmentation
        try:
            t0 = time.monotonic()
            err = error_of(segment(client, body, timeout_s=0.3), 504, "deadline_exceeded")
            assert 0.25 < time.monotonic() - t0 < 5 and err["limit"] == 0.3
            assert client.get("/v1/stats").json()["queue"]["pending"] == 0  # the slot is free again
            result = {}
            waiting = threading.Thread(target=lambda: result.update(r=segment(client, body)))
            waiting.start()
            until = time.monotonic() + 30
            while client.get("/v1/stats").json()["queue"]["pending"] < 1 and time.monotonic() < until:
                time.sleep(0.01)
            t0 = time.monotonic()
            err = error_of(segment(client, body), 429, "queue_full")
            assert time.monotonic() - t0 < 2 and err["limit"] == 1
            app.state.status = "draining"  # what SIGTERM does (DrainingServer.handle_exit)
            error_of(segment(client, body), 503, "not_ready_draining")
            assert client.get("/health/ready").status_code == 503
        finally:
            release.set()
        waiting.join(60)
        assert result["r"].status_code == 200 and result["r"].headers["content-type"] == "image/png"


# --- options ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["decode.beam_size=3"], "segmentation run; these options are for text runs only: decode.* options"),
    (["--quantize", "int8"], "segmentation run; these options are for text runs only: quantize"),
    (["--tile", "10"], "serve.tile must be 0 (whole images) or >= 64"),
    (["--tile", "64", "--overlap", "33"], "serve.overlap must be between 0 and tile / 2 = 32"),
    (["--max-image-pixels", "0"], "serve.max_image_pixels must be >= 1"),
])
def test_serve_refuses_options_a_segmentation_run_cannot_use(runs, capsys, args, message):
    assert main(["serve", "--model", str(runs["unet"]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
