"""Model processes: a served run's model calls in child processes, so the HTTP side never waits on the model.

    engine = ProcessEngine(run, ServeConfig(workers=1))   # what `crossway serve` loads
    engine.run_batch(inputs, key)                          # the batcher's model call, answered by a child process

The server's process keeps the engine without weights (`load_engine(run, cfg, weights=False)`: config, tokenizers,
limits, info), which is all the request checks need; each child process loads the whole engine, warms it up and
then answers model calls over a pipe: `(inputs, key)` in, the engine's `run_batch` outputs out (or the error it
raised). The event loop and the model no longer share one interpreter lock, so requests are parsed and answered
while a batch decodes, and the batch that follows fills meanwhile (crossway.batcher).

With `workers` > 1 there is one child per batcher worker thread; a thread takes whichever child is idle. A child
that dies (killed, out of memory) fails the call it was running with a 503 `model_restarting` and is started
again; the next call on it waits for the new one. The children ignore SIGINT (a Ctrl-C in the terminal reaches the
whole process group): the server drains first, then closes them; they also exit when the server's process is gone
(their pipe closes).
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from crossway.errors import CrosswayError
from crossway.inference import set_threads
from crossway.server import RequestError, ServeConfig, load_engine

log = logging.getLogger("crossway.server")
START_TIMEOUT_S = 600.0  # loading and warming up a model may take this long before the child counts as failed


class ModelProcessError(CrosswayError):
    """A model process failed to start or died."""


class ModelProcess:
    """One child process that holds the run's engine and answers `run_batch` calls, one at a time."""

    def __init__(self, run: str | Path, cfg: ServeConfig, index: int = 0):
        self.run, self.cfg, self.index = str(run), cfg, index
        self._proc: multiprocessing.Process | None = None
        self._conn: Connection | None = None
        self.info: dict | None = None  # the engine's, from the child's ready message (kept across restarts)
        self.start()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(self.run, self.cfg, child),
                                 name=f"crossway-model-{self.index}", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Block until the child has loaded and warmed up its engine; raise its error if it could not."""
        if self._ready:
            return
        if not self._conn.poll(timeout):
            self.close()
            raise ModelProcessError(f"the model process did not start within {timeout:g} s")
        status, payload = self._receive()
        if status != "ready":
            self.close()
            raise payload
        self._ready, self.info = True, payload

    def call(self, inputs: list, key) -> list:
        """The engine's `run_batch(inputs, key)` in the child."""
        self.wait_ready()
        try:
            self._conn.send_bytes(pickle.dumps((inputs, key), protocol=pickle.HIGHEST_PROTOCOL))
            status, payload = self._receive()
        except (EOFError, OSError, ModelProcessError):
            self._proc.join(1)
            code = self._proc.exitcode
            self.close()
            log.error("model process %d exited (code %s); starting it again", self.index, code)
            self.start()
            raise RequestError(503, "model_restarting", f"the model process exited (code {code}) during this "
                               "request; it is starting again, retry shortly") from None
        if status == "error":
            raise payload
        return payload

    def _receive(self) -> tuple[str, object]:
        try:
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise
        except Exception as e:  # noqa: BLE001 - an answer that does not unpickle
            raise ModelProcessError(f"unreadable answer from the model process: {type(e).__name__}: {e}") from None

    def close(self, timeout: float = 5.0) -> None:
        if self._conn is not None:
            try:
                self._conn.send_bytes(pickle.dumps(None))
            except (OSError, ValueError):
                pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._proc = None


def _child_main(run: str, cfg: ServeConfig, conn: Connection) -> None:
    """A model process: load, warm up, say ready (or why not), then answer calls until told to stop or the
    parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(status: str, payload) -> None:
        try:
            data = pickle.dumps((status, payload), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an output or error that does not pickle
            data = pickle.dumps(("error", ModelProcessError(f"{type(payload).__name__} cannot be sent from the "
                                                            f"model process: {e}")))
        conn.send_bytes(data)

    try:
        set_threads(cfg.threads)
        engine = load_engine(run, cfg)
        engine.warm_up()
    except Exception as e:  # noqa: BLE001 - reported to the server, which reports it on /health/ready
        send("failed", e if _picklable(e) else ModelProcessError(f"{type(e).__name__}: {e}"))
        return
    send("ready", engine.info())  # what only the loaded model knows (the attention it returns)
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the server's process is gone
            return
        if message is None:
            return
        inputs, key = message
        try:
            send("ok", engine.run_batch(inputs, key))
        except Exception as e:  # noqa: BLE001 - every request of the call gets the error
            if not _picklable(e):
                e = ModelProcessError(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
            send("error", e)


def _picklable(e: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(e))
        return True
    except Exception:  # noqa: BLE001
        return False


class ProcessEngine:
    """A served run whose model calls run in `cfg.workers` child processes; everything else (task, name, limits,
    info, token counts, decoding options) comes from the engine loaded here without weights."""

    def __init__(self, run: str | Path, cfg: ServeConfig):
        self.front = load_engine(run, cfg, weights=False)
        self.processes = [ModelProcess(run, cfg, i) for i in range(cfg.workers)]
        self._idle: queue.Queue[ModelProcess] = queue.Queue()
        try:
            for p in self.processes:  # started together, so they load side by side
                p.wait_ready()
        except BaseException:
            self.close()
            raise
        for p in self.processes:
            self._idle.put(p)

    def __getattr__(self, name: str):  # task, name, loaded (without weights), limits, info, count_tokens, ...
        if name == "front":  # not set yet: __init__ failed
            raise AttributeError(name)
        return getattr(self.front, name)

    def run_batch(self, inputs: list, key) -> list:
        """The batcher's model call, on an idle model process (one per batcher worker thread)."""
        process = self._idle.get()
        try:
            return process.call(inputs, key)
        finally:
            self._idle.put(process)

    def info(self) -> dict:
        """The engine's info as a model process, which holds the weights, gave it when it was ready."""
        return self.processes[0].info

    def warm_up(self) -> None:
        """Each model process warmed up its engine before it said it was ready."""

    def close(self) -> None:
        for p in self.processes:
            p.close()
