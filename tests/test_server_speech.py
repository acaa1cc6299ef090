"""POST /v1/transcribe against real sockets on 127.0.0.1 (httpx): transcripts, windows and attention equal to the
library's (greedy and beam, both tasks, long audio in windows, FLAC and stereo files), uploads sharing model
calls, every limit's status code and JSON error (the duration checked from the header before decoding),
wrong-task answers both ways, /v1/info and the OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch

from crossway import load_checkpoint, train, transcribe
from crossway.config import RunConfig
from crossway.data.audio import SAMPLE_RATE
from crossway.server import ServeConfig, create_app, load_engine
from crossway.server_speech import spectrogram
from tests.servers import running, train_run, wait_ready
from tests.tasks.speech_data import utterance, write_corpus
from tests.test_server_segment import error_of

torch.set_num_threads(1)  # the library's side of each comparison, in this process


def train_speech_run(root: Path, steps: int = 40) -> Path:
    """A tiny Whisper-style run (3-second windows) trained for a few steps on the tones corpus: outputs are
    poor (repetitions, fallbacks) but real and deterministic."""
    write_corpus(root, "train", 48, seed=1, words=1)
    write_corpus(root, "valid", 4, seed=2, words=1)
    train(RunConfig.from_dict({
        "task": "speech",
        "data": {"train": str(root / "train.tsv"), "valid": str(root / "valid.tsv"), "tasks": "transcribe,translate",
                 "max_seconds": 3, "max_frames": 4000, "spec_augment": False},
        "model": {"arch": "whisper", "dim": 32, "heads": 2, "ff_dim": 64, "enc_layers": 2, "dec_layers": 2},
        "train": {"out_dir": str(root / "speech"), "max_steps": steps, "lr": 3e-3, "warmup_steps": 10, "seed": 1,
                  "threads": 1, "progress": False, "max_epochs": 1000, "patience": 1000},
        "decode": {"max_len_a": 0.5, "max_len_b": 10}}))
    return root / "speech"


def wav(wave: np.ndarray, rate: int = SAMPLE_RATE, fmt: str = "WAV", **kw) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The speech run, a text run, and audio files: the valid utterances, 7 s of speech (3 windows), a FLAC
    and a stereo 22.05 kHz file."""
    root = tmp_path_factory.mktemp("speechserve")
    run = train_speech_run(root)
    files = sorted((root / "audio" / "valid").glob("*.wav"))
    rng = np.random.default_rng(7)
    long = np.concatenate([np.concatenate([utterance(t, rng), np.zeros(SAMPLE_RATE // 2, np.float32)])
                           for t in ["ab c", "de", "cab", "e ba"]])
    (root / "long.wav").write_bytes(wav(long))
    (root / "one.flac").write_bytes(wav(utterance("bad", rng), fmt="FLAC"))
    stereo = np.stack([utterance("ce", rng, 22_050)] * 2, 1)
    (root / "stereo.wav").write_bytes(wav(stereo, 22_050))
    return {"speech": run, "text": train_run(root, "rnn", steps=5),
            "files": [*files, root / "long.wav", root / "one.flac", root / "stereo.wav"]}


@pytest.fixture(scope="module")
def loaded(runs):
    return load_checkpoint(runs["speech"])


@pytest.fixture(scope="module")
def client(runs):
    cfg = ServeConfig(threads=1, max_audio_bytes=300_000, max_audio_seconds=10, batch_wait_ms=100, max_beam_size=4)
    with running(create_app(lambda: load_engine(runs["speech"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        wait_ready(c)
        yield c


def post(client, body: bytes, ctype: str = "audio/wav", **params) -> httpx.Response:
    return client.post("/v1/transcribe", content=body, params=params, headers={"content-type": ctype})


def library(loaded, files, task="transcribe", fallback=True, **options):
    cfg = dataclasses.replace(loaded.config.decode, **options)
    return transcribe(loaded.model, loaded.src, loaded.tgt, files, cfg, task, "en", fallback)


def same(out: dict, want) -> None:
    assert out["text"] == want.text and out["seconds"] == pytest.approx(want.seconds, abs=1e-4)
    assert len(out["windows"]) == len(want.windows)
    for got, w in zip(out["windows"], want.windows, strict=True):
        assert (got["text"], got["tokens"], got["finished"]) == (w.text, w.output.tokens, w.output.finished)
        assert (got["temperature"], got["decodes"]) == (w.temperature, w.decodes)
        assert (got["start"], got["end"]) == (pytest.approx(w.start, abs=1e-4), pytest.approx(w.end, abs=1e-4))
        assert got["mean_logprob"] == pytest.approx(w.mean_logprob, abs=1e-5)
        assert got["score"] == pytest.approx(w.output.score, abs=1e-5)


# --- outputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"strategy": "beam", "beam_size": 3}, {"task": "translate"},
                                    {"fallback": "false", "strategy": "beam", "beam_size": 2, "length_penalty": 0.5}])
def test_transcripts_equal_the_library(client, runs, loaded, params):
    options = {k: v for k, v in params.items() if k in ("strategy", "beam_size", "length_penalty")}
    for path in runs["files"]:  # one file a call, as one request alone (the fallback's samples depend on the call)
        (w,) = library(loaded, [path], params.get("task", "transcribe"), params.get("fallback") != "false", **options)
        r = post(client, path.read_bytes(), **params)
        assert r.status_code == 200, r.text
        out = r.json()
        same(out, w)
        assert (out["model"], out["task"], out["language"]) == ("speech", params.get("task", "transcribe"), "en")
        assert "spectrogram" not in out and "attention" not in out["windows"][0]  # only when asked
    assert len(out["windows"]) == 1 and (out["format"], out["sample_rate"], out["channels"]) == ("WAV", 22_050, 2)


def test_attention_and_spectrogram(client, runs, loaded):
    path = runs["files"][-3]  # over 5 s: windows of at most 3 s
    (want,) = library(loaded, [path], return_attention=True)
    out = post(client, path.read_bytes(), attention="true").json()
    same(out, want)
    assert len(out["windows"]) >= 2
    for got, w in zip(out["windows"], want.windows, strict=True):
        rows = np.array(got["attention"])  # (T, M): a row per token, then the end token's
        assert rows.shape == (len(got["tokens"]) + got["finished"], w.output.attention.shape[-1])
        assert np.abs(rows - w.output.attention.mean((1, 2)).numpy()).max() <= 1e-4  # mean of layers and heads
        assert np.allclose(rows.sum(1), 1, atol=1e-2)
        assert rows.shape[1] * got["seconds_per_position"] == pytest.approx(got["end"] - got["start"], abs=0.011)
    spec, frames = out["spectrogram"], soundfile.info(path).frames // 160
    values = np.array(spec["values"])  # (columns, mel bins): the features in columns of 1 frame (up to 600)
    assert frames < 600 and values.shape == (frames, 80) and spec["seconds_per_column"] == 0.01
    assert values.min() == 0 and values.max() == 255 and values.dtype.kind == "i"
    feats = torch.arange(30_001.0)[:, None].expand(-1, 80)  # (T, F): 300 s
    long = spectrogram(feats)
    assert len(long["values"]) == 589 and long["seconds_per_column"] == 0.51  # columns of 51 frames, the last of 13
    assert long["values"][0][0] == 0 and long["values"][-1][0] == 255


def test_concurrent_uploads_share_model_calls_and_keep_their_outputs(client, runs, loaded):
    bodies = [p.read_bytes() for p in runs["files"]]
    want = library(loaded, runs["files"], fallback=False)  # the fallback's samples depend on the call's windows
    calls_before = client.get("/v1/stats").json()["queue"]["calls"]

    async def together():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/transcribe", content=b, params={"fallback": "false"})
                                          for b in bodies))

    results = asyncio.run(together())
    assert client.get("/v1/stats").json()["queue"]["calls"] - calls_before < len(bodies)  # they shared calls
    for r, w in zip(results, want, strict=True):
        assert r.status_code == 200, r.text
        same(r.json(), w)


def test_a_corrupt_file_fails_alone_in_its_batch(client, runs):
    bad = np.zeros(4000, np.float32)
    bad[100] = np.nan  # a readable header (checked on the event loop), samples the decoder refuses
    good = [p.read_bytes() for p in runs["files"][:3]]
    bodies = [good[0], wav(bad, subtype="FLOAT"), *good[1:]]

    async def together():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/transcribe", content=b) for b in bodies))

    results = asyncio.run(together())
    assert "NaN" in error_of(results[1], 422, "invalid_audio")["message"]
    for r, body in zip([results[0], *results[2:]], good, strict=True):
        assert r.status_code == 200 and r.json()["text"] == post(client, body).json()["text"]


# --- limits and bad input ---------------------------------------------------------------------------------------
def flac_declaring(seconds: float) -> bytes:
    """A real 1-second FLAC of silence (about 130 bytes) whose STREAMINFO declares `seconds` of audio."""
    data = bytearray(wav(np.zeros(SAMPLE_RATE, np.float32), fmt="FLAC"))
    assert data[:4] == b"fLaC"  # then the block header (4), sizes (10), rate/channels/bits/samples (8 bytes)
    fields = int.from_bytes(data[18:26], "big") & ~(2 ** 36 - 1)
    data[18:26] = (fields | int(seconds * SAMPLE_RATE)).to_bytes(8, "big")
    return bytes(data)


def test_too_many_bytes_or_seconds_are_413_before_decoding(client):
    assert error_of(post(client, b"\0" * 300_001), 413, "body_too_large")["limit"] == 300_000
    submitted = client.get("/v1/stats").json()["queue"]["submitted"]
    t0 = time.monotonic()
    err = error_of(post(client, flac_declaring(10 * 3600), "audio/flac"), 413, "audio_too_long")
    assert time.monotonic() - t0 < 1.0  # refused from the header: ten hours are never decoded
    assert (err["seconds"], err["limit"]) == (36_000, 10) and "max_audio_seconds=10 s" in err["message"]
    quiet = wav(np.full(12 * SAMPLE_RATE, 0.01, np.float32), fmt="FLAC")  # 12 s in a few hundred bytes
    assert len(quiet) < 10_000 and error_of(post(client, quiet), 413, "audio_too_long")["seconds"] == 12
    assert client.get("/v1/stats").json()["queue"]["submitted"] == submitted  # nothing reached the worker


def test_bad_audio_is_422_and_non_audio_415(client, runs):
    good = runs["files"][0].read_bytes()
    for body, code, words in [(b"", "invalid_audio", "empty body"),
                              (b"not audio at all", "invalid_audio", "not a readable audio file"),
                              (wav(np.zeros(0, np.float32)), "invalid_audio", "the audio is empty"),
                              (wav(np.zeros(100, np.float32)), "audio_too_short", "at least 12.6 ms"),
                              (wav(np.zeros(3000, np.float32), 2000), "invalid_audio", "below 4000 Hz")]:
        assert words in error_of(post(client, body), 422, code)["message"]
    for ctype in ("application/json", "multipart/form-data; boundary=x", "image/png"):
        assert "--data-binary" in error_of(post(client, good, ctype), 415, "unsupported_media_type")["message"]
    for ctype in ("audio/x-wav", "audio/mpeg", "application/octet-stream", ""):  # any audio type: read by content
        assert post(client, good, ctype).status_code == 200


@pytest.mark.parametrize("params,code,field", [
    ({"task": "dictate"}, "invalid_request", "query.task"),
    ({"strategy": "sample"}, "invalid_request", "query.strategy"),
    ({"fallback": "perhaps"}, "invalid_request", "query.fallback"),
    ({"language": "xx"}, "unsupported_language", "language"),
    ({"strategy": "beam", "beam_size": 5}, "beam_too_large", "beam_size"),  # the server's max_beam_size is 4
    ({"max_len_b": 100_000}, "output_too_long", "max_len_b"),
    ({"n_best": 2}, "invalid_request", "n_best"),  # a transcript is one text
])
def test_bad_options_are_422_naming_the_parameter(client, runs, params, code, field):
    err = error_of(post(client, runs["files"][0].read_bytes(), **params), 422, code)
    assert err["field"] == field, err


def test_each_task_answers_on_its_own_endpoint_only(client, runs):
    body = runs["files"][0].read_bytes()
    for path in ("/v1/caption", "/v1/segment"):
        err = error_of(client.post(path, content=body, headers={"content-type": "image/png"}), 404, "wrong_task")
        assert "a speech run" in err["message"] and err["endpoint"] == "POST /v1/transcribe"
    err = error_of(client.post("/v1/translate", json={"inputs": ["abc"]}), 404, "wrong_task")
    assert err["endpoint"] == "POST /v1/transcribe"
    with running(create_app(lambda: load_engine(runs["text"]))) as url, httpx.Client(base_url=url, timeout=60) as text:
        wait_ready(text)
        for params in ({}, {"task": "dictate"}):  # the task is checked first: a bad option does not hide it
            err = error_of(post(text, body, **params), 404, "wrong_task")
            assert "a text run" in err["message"] and err["endpoint"] == "POST /v1/translate"


def test_info_and_openapi_describe_the_endpoint(client):
    info = client.get("/v1/info").json()
    assert (info["task"], info["arch"], info["tasks"], info["language"]) == ("speech", "whisper",
                                                                             ["transcribe", "translate"], "en")
    assert (info["window_seconds"], info["n_mels"], info["tgt_tokenizer"]) == (3.0, 80, "char")
    assert info["limits"] == {"max_body_bytes": 300_000, "max_audio_seconds": 10,
                              "content_types": ["audio/wav", "audio/flac", "audio/ogg", "audio/*"],
                              "max_beam_size": 4, "max_output_tokens": 512, "timeout_s": 30.0}
    op = client.get("/openapi.json").json()["paths"]["/v1/transcribe"]["post"]
    assert "Transcribe" in op["summary"] and {"audio/wav", "audio/flac"} <= set(op["requestBody"]["content"])
    assert set(op["responses"]) == {"200", "404", "413", "415", "422", "429", "503", "504"}
    assert "audio_too_long" in op["responses"]["413"]["description"]
    assert {p["name"] for p in op["parameters"]} == {"task", "language", "fallback", "strategy", "beam_size",
                                                     "length_penalty", "max_len_b", "attention", "timeout_s"}
    with pytest.raises(ValueError, match="max_audio_seconds"):
        ServeConfig(max_audio_seconds=0)
