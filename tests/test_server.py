"""The HTTP server against real sockets on 127.0.0.1 (httpx): every limit's status code and JSON error,
readiness across start-up and shutdown, draining on SIGTERM, and micro-batching that changes no output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from crossway import cli
from crossway.config import decode_overrides
from crossway.errors import ConfigError
from crossway.graphone import GraphoneConfig, load_graphone, train_graphone_file
from crossway.inference import translate
from crossway.server import ServeConfig, create_app
from crossway.server_text import TextEngine
from crossway.training.checkpoint import load_checkpoint
from tests.servers import free_port, running, train_run, wait_ready


class HeldEngine(TextEngine):
    """The real model, whose calls after the warm-up wait until `release` is set: requests stay in flight for
    as long as a test needs, on a fast machine or a slow one."""

    release: threading.Event
    held = False

    def warm_up(self):
        super().warm_up()
        self.held = True

    def translate(self, texts, cfg):
        if self.held:
            self.release.wait(60)
        return super().translate(texts, cfg)


def held_loader(run, release: threading.Event):
    def load():
        engine = HeldEngine.load(run)
        engine.release = release
        return engine
    return load


def wait_until(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, f"{what} did not happen within {timeout:g} s"
        time.sleep(0.01)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def rnn_server(served_runs):
    app = create_app(lambda: TextEngine.load(served_runs["rnn"]), ServeConfig(max_inputs=4, max_body_bytes=20_000,
                                                                          max_beam_size=8))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def test_translate_returns_outputs_scores_nbest_and_attention(rnn_server):
    r = rnn_server.post("/v1/translate", json={"inputs": ["abc", "hgf"], "options": {"strategy": "beam",
                                                                                     "beam_size": 4, "n_best": 3},
                                               "return_attention": True})
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert len(outs) == 2
    for out in outs:
        assert len(out["alternatives"]) == 2 and out["score"] >= out["alternatives"][0]["score"]
        att = out["attention"]
        assert att["src_tokens"] == list("abc") or att["src_tokens"] == list("hgf")
        assert len(att["weights"]) == len(att["tgt_tokens"]) and att["shape"][-1] == 3
        for row in att["weights"]:
            assert abs(sum(row) - 1) < 1e-2  # one attention distribution per output token
    assert "paths" in rnn_server.get("/openapi.json").json()
    assert rnn_server.get("/health/live").json() == {"status": "live"}


@pytest.mark.parametrize("body,code,field", [
    ({"inputs": ["abc"] * 5}, "too_many_inputs", "inputs"),
    ({"inputs": ["a" * 21]}, "input_too_long", "inputs[0]"),  # tiny_config: data.max_src_len = 20
    ({"inputs": ["abc", "  "]}, "empty_input", "inputs[1]"),
    ({"inputs": []}, "invalid_request", None),
    ({"inputs": ["abc"], "options": {"beam": 2}}, "invalid_request", None),
    ({"inputs": ["abc"], "options": {"strategy": "beam", "beam_size": 9}}, "beam_too_large", "options.beam_size"),
    ({"inputs": ["abc"], "options": {"max_len_b": 100000}}, "output_too_long", "options"),
    ({"inputs": ["abc"], "options": {"strategy": "beam", "beam_size": 2, "n_best": 3}}, "invalid_options", "options"),
    ({"inputs": ["abc"], "options": {"top_p": 0}}, "invalid_request", None),
    ({"inputs": "abc"}, "invalid_request", None),
])
def test_limits_are_422_naming_the_limit(rnn_server, body, code, field):
    err = error_of(rnn_server.post("/v1/translate", json=body), 422)
    assert err["code"] == code
    if field:
        assert err["field"] == field
    if code in ("too_many_inputs", "input_too_long", "beam_too_large"):
        assert str(err["limit"]) in err["message"]


def test_coverage_penalty_is_a_request_option(rnn_server, tmp_path):
    """Beam search's coverage penalty per request: decoded by a model with attention; a model without it answers
    422 naming the option, and still serves requests without it."""
    body = {"inputs": ["abcd", "hgf"], "options": {"strategy": "beam", "beam_size": 3, "coverage_penalty": 0.5}}
    assert rnn_server.get("/v1/info").json()["attention"] == {"layers": 1, "heads": 1}
    r = rnn_server.post("/v1/translate", json=body)
    assert r.status_code == 200, r.text
    assert [len(o["tokens"]) > 0 for o in r.json()["outputs"]] == [True, True]
    plain = train_run(tmp_path, "rnn-plain", steps=5)
    with running(create_app(lambda: TextEngine.load(plain))) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        assert client.get("/v1/info").json()["attention"] == {"layers": 0, "heads": 0}  # the page hides its controls
        err = error_of(client.post("/v1/translate", json=body), 422)
        assert err["code"] == "invalid_options" and err["field"] == "options" and "attention" in err["message"]
        del body["options"]["coverage_penalty"]
        assert client.post("/v1/translate", json=body).status_code == 200


def test_malformed_json_and_non_json_bodies_are_422(rnn_server):
    assert error_of(rnn_server.post("/v1/translate", content=b'{"inputs": [',
                                    headers={"content-type": "application/json"}), 422)["code"] == "invalid_request"
    err = error_of(rnn_server.post("/v1/translate", content=b"inputs=abc"), 422)
    assert "JSON" in err["message"]


def test_oversized_body_is_413_before_it_is_read(rnn_server):
    r = rnn_server.post("/v1/translate", json={"inputs": ["a" * 30_000]})
    assert error_of(r, 413)["limit"] == 20_000
    # a client that announces 10 MB and sends 10 bytes still gets its answer: nothing waits for the body
    host, port = rnn_server.base_url.host, rnn_server.base_url.port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10000000\r\n\r\n{\"inputs\":")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(30):
            yield b" " * 1000

    assert error_of(rnn_server.post("/v1/translate", content=chunks(),
                                    headers={"content-type": "application/json"}), 413)["code"] == "body_too_large"


def test_full_queue_is_429_at_once(served_runs):
    release = threading.Event()
    app = create_app(held_loader(served_runs["rnn"], release), ServeConfig(max_queue=2, batch_wait_ms=0,
                                                                           max_batch_inputs=1))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        results = {}

        def call(i):
            results[i] = client.post("/v1/translate", json={"inputs": ["abc"]}).status_code

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        try:
            pending = lambda: client.get("/v1/stats").json()["queue"]["pending"]  # noqa: E731
            wait_until(lambda: pending() == 2, what="two requests queued or decoding")
            t0 = time.monotonic()
            err = error_of(client.post("/v1/translate", json={"inputs": ["abc"]}, timeout=10), 429)
            # at once (milliseconds): a request that waited for a slot would wait until the model is released
            assert time.monotonic() - t0 < 2.0 and err["limit"] == 2
        finally:
            release.set()
            for t in threads:
                t.join(60)
        assert results == {0: 200, 1: 200}


def test_deadline_is_504_and_frees_the_slot(served_runs):
    release = threading.Event()
    app = create_app(held_loader(served_runs["rnn"], release), ServeConfig(max_queue=1, batch_wait_ms=0))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        try:
            t0 = time.monotonic()
            err = error_of(client.post("/v1/translate", json={"inputs": ["abc"], "timeout_s": 0.2}, timeout=10), 504)
            # not before the deadline, and not from the model: held, it answers nothing until released
            assert 0.15 < time.monotonic() - t0 < 5.0 and err["code"] == "deadline_exceeded"
            assert client.get("/v1/stats").json()["queue"]["pending"] == 0
            # the freed slot takes the next request (the queue holds one), which waits for the model and succeeds
            result = {}
            t = threading.Thread(target=lambda: result.update(
                status=client.post("/v1/translate", json={"inputs": ["abc"]}).status_code))
            t.start()
            wait_until(lambda: client.get("/v1/stats").json()["queue"]["pending"] == 1 or result,
                       what="the next request queued")
            assert not result, result  # (not refused: the model is still held)
        finally:
            release.set()
        t.join(60)
        assert result == {"status": 200}


def test_ready_is_503_while_loading_then_200(served_runs):
    gate = threading.Event()

    def load():
        gate.wait(20)
        return TextEngine.load(served_runs["rnn"])

    with running(create_app(load)) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = client.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert client.get("/health/live").status_code == 200
        assert error_of(client.post("/v1/translate", json={"inputs": ["abc"]}), 503)["code"] == "not_ready_loading"
        gate.set()
        wait_ready(client)
        assert client.post("/v1/translate", json={"inputs": ["abc"]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported_not_crashed(tmp_path):
    app = create_app(lambda: TextEngine.load(tmp_path / "nothing"))
    with running(app) as url, httpx.Client(base_url=url) as client:
        until = time.monotonic() + 10
        while client.get("/health/ready").json()["status"] == "loading" and time.monotonic() < until:
            time.sleep(0.02)
        r = client.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "nothing" in r.json()["error"]



RERANK = ("decode.strategy=beam", "decode.beam_size=4", "decode.n_best=4", "decode.rescore_union=true")


def test_a_server_with_a_rescorer_answers_as_the_library_reranks(served_runs):
    rescorer = str(served_runs["transformer"])
    cfg = ServeConfig(decode=RERANK, rescore=(rescorer,), rescore_weights=(1.0, 0.5))
    inputs = ["abc", "hgfed"]
    with running(create_app(lambda: TextEngine.load(served_runs["rnn"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        info = client.get("/v1/info").json()
        assert info["rescore"]["weights"] == [1.0, 0.5] and info["rescore"]["models"][0].startswith(rescorer)
        assert info["decode"]["n_best"] == 4 and info["decode"]["rescore_union"] is True
        r = client.post("/v1/translate", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        served = r.json()["outputs"]
        err = error_of(client.post("/v1/translate", json={"inputs": ["abc"], "options": {"strategy": "greedy"}}), 422)
        assert err["code"] == "invalid_options" and "n-best" in err["message"] and "1 rescoring" in err["message"]
    main, other = load_checkpoint(served_runs["rnn"]), load_checkpoint(rescorer)
    dcfg = decode_overrides(main.config.decode, list(RERANK))
    want = translate(main.model, main.src, main.tgt, inputs, dcfg, rescorers=[other], weights=[1.0, 0.5])
    plain = translate(main.model, main.src, main.tgt, inputs, dcfg)
    assert [o["text"] for o in served] == [w.text for w in want]
    assert [o["score"] for o in served] == pytest.approx([w.score for w in want], abs=1e-4)
    assert all(abs(o["score"] - p.score) > 1e-3 for o, p in zip(served, plain, strict=True))  # both models scored
    assert len(served[0]["alternatives"]) == len(want[0].alternatives) > 0


def test_a_server_with_a_graphone_rescorer(served_runs, tmp_path):
    g = tmp_path / "g"
    train_graphone_file(served_runs["rnn"].parent / "train.tsv", g, GraphoneConfig(order=3), log=lambda _: None)
    cfg = ServeConfig(decode=RERANK, rescore=(str(g),))
    inputs = ["abc", "hgfed"]
    with running(create_app(lambda: TextEngine.load(served_runs["rnn"], cfg), cfg)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        assert client.get("/v1/info").json()["rescore"]["models"] == [str(g)]
        r = client.post("/v1/translate", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        served = r.json()["outputs"]
    main = load_checkpoint(served_runs["rnn"])
    dcfg = decode_overrides(main.config.decode, list(RERANK))
    want = translate(main.model, main.src, main.tgt, inputs, dcfg, rescorers=[load_graphone(g)])
    assert [o["text"] for o in served] == [w.text for w in want]
    assert [o["score"] for o in served] == pytest.approx([w.score for w in want], abs=1e-4)


def test_rescorers_need_an_nbest_list_from_the_servers_options(served_runs):
    with pytest.raises(ConfigError, match="n-best"):  # tiny_config decodes greedily: nothing to rerank
        TextEngine.load(served_runs["rnn"], ServeConfig(rescore=(str(served_runs["transformer"]),)))
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        ServeConfig(rescore=("a", "b"), rescore_weights=(1.0, 1.0))

@pytest.mark.parametrize("options", [{"strategy": "greedy"}, {"strategy": "beam", "beam_size": 3, "n_best": 2}])
def test_micro_batching_gives_the_outputs_of_single_requests(served_runs, options):
    app = create_app(lambda: TextEngine.load(served_runs["transformer"]), ServeConfig(batch_wait_ms=100))
    words = ["abc", "hgfedcb", "ddd", "a", "bcdefga", "hh", "gfe", "cabbage"]
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        body = lambda w: {"inputs": [w], "options": options, "return_attention": True}  # noqa: E731
        single = [client.post("/v1/translate", json=body(w)).json()["outputs"] for w in words]
        calls_before = client.get("/v1/stats").json()["queue"]["calls"]

        async def together():
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                return await asyncio.gather(*(ac.post("/v1/translate", json=body(w)) for w in words))

        batched = [r.json()["outputs"] for r in asyncio.run(together())]
        calls = client.get("/v1/stats").json()["queue"]["calls"] - calls_before
    assert calls < len(words)  # they really shared model calls
    for s, b in zip(single, batched, strict=True):
        assert [o["text"] for o in s] == [o["text"] for o in b]
        assert s[0]["score"] == pytest.approx(b[0]["score"], abs=1e-4)
        assert [a["text"] for a in s[0].get("alternatives", [])] == [a["text"] for a in b[0].get("alternatives", [])]
        ws, wb = s[0]["attention"]["weights"], b[0]["attention"]["weights"]
        assert len(ws) == len(wb) and all(r == pytest.approx(q, abs=2e-4) for r, q in zip(ws, wb, strict=True))


def _serve_process(run, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "crossway", "serve", "--model", str(run), "--port", str(port),
                             "--threads", "1", "--log-level", "warning", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigterm_drains_in_flight_requests_then_exits(served_runs):
    port = free_port()
    # generous limits (drain, deadline, client, join): ten slow requests in a row take a while on a slow machine
    proc = _serve_process(served_runs["transformer"], port, "--max-batch-inputs", "1", "--batch-wait-ms", "0",
                          "--drain-timeout", "600", "--timeout", "600")
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            until = time.monotonic() + 60
            while True:
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < until and proc.poll() is None, "server did not become ready"
                time.sleep(0.05)
            # 10 slow requests: forced long outputs, decoded one model call at a time
            slow = {"inputs": ["abcdefg"] * 4, "options": {"strategy": "beam", "beam_size": 8, "min_len": 300,
                                                             "max_len_b": 310}}
            statuses: dict[int, int] = {}

            def call(i):
                with httpx.Client(base_url=url, timeout=600) as c:
                    statuses[i] = c.post("/v1/translate", json=slow).status_code

            threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            until = time.monotonic() + 60
            while client.get("/v1/stats").json()["inflight"] < 10 and time.monotonic() < until:
                time.sleep(0.01)
            stats = client.get("/v1/stats").json()
            assert stats["inflight"] == 10 and stats["queue"]["completed"] == 0, stats
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: client.get("/health/ready").status_code == 503, what="draining after SIGTERM")
            r = client.get("/health/ready")
            assert r.json()["status"] == "draining" and client.get("/v1/stats").json()["queue"]["completed"] < 10
            assert error_of(client.post("/v1/translate", json={"inputs": ["abc"]}), 503)["code"] == \
                "not_ready_draining"
            for t in threads:
                t.join(600)
        assert statuses == {i: 200 for i in range(10)}
        proc.wait(60)
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read().decode(errors="replace")
    assert "Traceback" not in out, out


def test_serve_cli_names_a_missing_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crossway", "serve", "--model", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such model directory" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--rescore", "{tmp}/r2l"], "r2l: no such model directory"),
    (["--rescore-weights", "1,1"], "--rescore-weights needs --rescore RUN"),
    (["--rescore", "{run}", "--rescore-weights", "1,1,1"], "3 weights for 2 models"),
    (["--max-queue", "0"], "serve.max_queue must be >= 1"),
    (["decode.beam_size=0"], "decode.beam_size"),
    (["--rescore", "{run}"], "reranking needs an n-best list"),  # the run decodes greedily
    (["--rescore", "{run}", "decode.strategy=beam", "decode.beam_size=8", "decode.n_best=8", "decode.seed=x"],
     "decode.seed"),
])
def test_serve_cli_rejects_bad_options_before_starting(served_runs, tmp_path, capsys, args, message):
    run = str(served_runs["rnn"])
    argv = ["serve", "--model", run, *[a.format(tmp=tmp_path, run=run) for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_error_body_is_json(rnn_server):
    for r in (rnn_server.get("/nope"), rnn_server.put("/v1/translate", json={})):
        assert r.status_code in (404, 405) and json.loads(r.text)


ODD_BODIES = [
    {"inputs": ["abc"], "options": {"seed": 2 ** 70, "strategy": "sample"}},
    {"inputs": ["abc"], "options": {"seed": -1, "strategy": "sample"}},
    {"inputs": ["abc"], "options": {"top_k": 10 ** 9, "strategy": "sample"}},
    {"inputs": ["abc"], "options": {"strategy": "beam", "beam_size": 10 ** 12}},
    {"inputs": ["abc"], "options": {"max_len_a": 1e308}},
    {"inputs": ["abc"], "options": {"length_penalty": float("nan")}},
    {"inputs": ["abc"], "options": {"temperature": 1e-300, "strategy": "sample"}},
    {"inputs": ["abc"], "options": {"min_len": 10 ** 6}},
    {"inputs": ["abc"], "options": {"no_repeat_ngram": 1, "strategy": "beam", "beam_size": 8, "n_best": 8}},
    {"inputs": ["\u0000\ud7ff\U0010ffff zz"]},
    {"inputs": ["abc"], "timeout_s": 1e300},
    {"inputs": ["abc"], "timeout_s": -1},
    {"inputs": [1, 2]},
    {"inputs": ["abc"], "options": None},
    {"inputs": ["abc"], "return_attention": "yes please"},
    [1, 2, 3],
    "abc",
    None,
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
def test_no_request_produces_a_500(rnn_server, body):
    r = rnn_server.post("/v1/translate", content=json.dumps(body, allow_nan=True),
                        headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    assert r.json()
