"""Helpers for the serving tests: small trained runs and a server on 127.0.0.1 in a thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from crossway import train
from tests.conftest import reversal_rows, tiny_config, write_tsv

MODELS = {
    "rnn": {"attention": "bahdanau", "cell": "gru", "emb_dim": 16, "hidden": 32, "dropout": 0.0},
    "rnn-plain": {"attention": "none", "cell": "gru", "emb_dim": 16, "hidden": 32, "dropout": 0.0},
    "transformer": {"arch": "transformer", "d_model": 32, "heads": 4, "ff_dim": 64, "enc_layers": 2,
                    "dec_layers": 2, "dropout": 0.0},
}


def train_run(root: Path, arch: str, steps: int = 40) -> Path:
    """A run trained for a few steps on the reversal task: enough for real, deterministic outputs."""
    data = {"train": write_tsv(root / "train.tsv", reversal_rows(400, seed=1)),
            "valid": write_tsv(root / "valid.tsv", reversal_rows(20, seed=2))}
    train(tiny_config(data, root / arch, model=MODELS[arch], train={"max_steps": steps, "lr": 0.01}))
    return root / arch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, timeout: float = 20.0):
    """Serve `app` on 127.0.0.1 from a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > until or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_ready(client, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > until:
            raise RuntimeError("the server never became ready")
        time.sleep(0.02)
