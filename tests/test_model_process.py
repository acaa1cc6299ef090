"""Model processes (crossway.model_process): outputs equal to the engine's in-process ones, errors relayed, a killed
process replaced, and a slow request that does not hold back short ones (two processes)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from crossway.model_process import ProcessEngine
from crossway.server import RequestError, ServeConfig, create_app
from crossway.server_text import TextEngine
from tests.servers import running, wait_ready


@pytest.fixture(scope="module")
def process_engine(served_runs):
    engine = ProcessEngine(served_runs["transformer"], ServeConfig(workers=1, threads=1))
    yield engine
    engine.close()


def test_outputs_equal_the_in_process_engines(served_runs, process_engine):
    local = TextEngine.load(served_runs["transformer"])
    assert process_engine.task == "text" and process_engine.name == local.name
    assert process_engine.limits(ServeConfig()) == local.limits(ServeConfig())
    assert next(process_engine.loaded.model.parameters()).is_meta  # the HTTP side holds no weights
    local.warm_up()  # the attention the model returns is seen by a decode: the process's, sent when it was ready
    assert process_engine.info() == local.info() and local.info()["attention"] == {"layers": 2, "heads": 4}
    for options in ({"strategy": "greedy"}, {"strategy": "beam", "beam_size": 4, "n_best": 2,
                                              "return_attention": True}):
        dcfg = dataclasses.replace(local.loaded.config.decode, **options)
        texts = ["abc", "hgfedcb", "a"]
        theirs, ours = process_engine.run_batch(texts, ("translate", dcfg, None)), local.translate(texts, dcfg)
        for a, b in zip(theirs, ours, strict=True):
            assert (a.text, a.tokens, a.finished) == (b.text, b.tokens, b.finished)
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert [x.text for x in a.alternatives or []] == [x.text for x in b.alternatives or []]
            if b.attention is not None:
                assert a.attention.shape == b.attention.shape


def test_an_error_in_the_model_process_reaches_the_caller(process_engine):
    with pytest.raises(Exception, match="decode|config|strategy|attribute|key|unpack") as info:
        process_engine.run_batch(["abc"], ("translate", "not a DecodeConfig", None))
    assert not isinstance(info.value, RequestError)
    dcfg = process_engine.loaded.config.decode
    assert len(process_engine.run_batch(["abc"], ("translate", dcfg, None))) == 1  # and it keeps serving


def test_a_killed_model_process_is_a_503_then_replaced(served_runs):
    engine = ProcessEngine(served_runs["rnn"], ServeConfig(workers=1, threads=1))
    try:
        dcfg = engine.loaded.config.decode
        before = engine.run_batch(["abc"], ("translate", dcfg, None))[0].text
        os.kill(engine.processes[0]._proc.pid, signal.SIGKILL)
        with pytest.raises(RequestError) as info:
            engine.run_batch(["abc"], ("translate", dcfg, None))
        assert info.value.status == 503 and info.value.code == "model_restarting"
        assert engine.run_batch(["abc"], ("translate", dcfg, None))[0].text == before
    finally:
        engine.close()


def test_a_model_that_fails_to_load_in_its_process_is_an_error_naming_the_file(served_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(served_runs["rnn"], run)
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the config and vocabulary still read: only the child fails
    with pytest.raises(Exception, match="model.safetensors|cannot load|checkpoint") as info:
        ProcessEngine(run, ServeConfig(workers=1, threads=1))
    assert str(run) in str(info.value) or "model.safetensors" in str(info.value)


def test_a_slow_request_does_not_hold_back_short_ones(served_runs):
    """Two model processes: one decodes a slow request (16 inputs, beam 16, 400+ tokens each: seconds), while
    short requests pass through the other, each well within its own 3-second deadline."""
    cfg = ServeConfig(workers=2, threads=1, batch_wait_ms=0, timeout_s=300)
    app = create_app(lambda: ProcessEngine(served_runs["transformer"], cfg), cfg)
    slow = {"inputs": ["abcdefg"] * 16, "options": {"strategy": "beam", "beam_size": 16, "min_len": 400,
                                                      "max_len_b": 410}}
    with running(app) as url, httpx.Client(base_url=url, timeout=300) as client:
        wait_ready(client, timeout=120)
        done = {}

        def call_slow():
            with httpx.Client(base_url=url, timeout=300) as c:
                done["status"] = c.post("/v1/translate", json=slow).status_code
                done["at"] = time.monotonic()

        thread = threading.Thread(target=call_slow)
        thread.start()
        until = time.monotonic() + 30
        while client.get("/v1/stats").json()["queue"]["pending"] < 1 and time.monotonic() < until:
            time.sleep(0.01)
        time.sleep(0.2)  # the slow call has started on one process
        latencies = []
        for _ in range(10):
            t0 = time.monotonic()
            r = client.post("/v1/translate", json={"inputs": ["abc"], "timeout_s": 3})
            assert r.status_code == 200, r.text
            latencies.append(time.monotonic() - t0)
        finished_short = time.monotonic()
        thread.join(300)
    assert done["status"] == 200
    assert done["at"] > finished_short, "the slow request ended before the short ones: nothing was held back"
    assert max(latencies) < 3
