"""Serving load test on loopback: `crossway serve` in a subprocess, many concurrent HTTP clients, a fixed number
of requests, one input each; then the library's own batch throughput on the same inputs, so the table shows what
the server delivers of what the model can do. Server configurations side by side: the model in its own process
(the default), the model on a thread of the server's process (`--workers 0`), one model call per request.

    python bench/serve.py --model runs/g2p-demo --clients 200 --requests 2000
    python bench/serve.py --model runs/g2p-demo --options '{"strategy": "beam", "beam_size": 5}'
    python bench/serve.py --model runs/bible-en-es --data ../shared/data/bible/test.tsv --column en --words 20

Prints, per configuration: throughput (requests/s), latency p50/p90/p99, status-code counts, lost requests
(sent but never answered), model calls, the server's resident memory before and after the load (model processes
included; "before" is after a warm-up of --warmup requests), CPU milliseconds per request of the server's process
and of its model processes, and the ratio of its throughput to the library's (`crossway.load(run).translate`, batches of
--max-batch-inputs, on the server's thread count, in this process after the servers have stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name -> extra `crossway serve` flags (besides --max-batch-inputs)
    "model process": [],
    "model thread (--workers 0)": ["--workers", "0"],
    "one call per request": ["--batch-wait-ms", "0", "--max-batch-inputs", "1"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its children (the model processes)."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for p in [pid, *(int(c) for c in (children.read_text().split() if children.exists() else []))]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of `pid` and of its children (the model processes)."""
    def one(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in (children.read_text().split() if children.exists() else [])]
    return one(pid), sum(one(k) for k in kids)


def load_inputs(path: str | None, n: int, column: str | None = None, words: int = 0) -> list[str]:
    """`n` inputs from a TSV's first column (or the column named by its header), repeated as needed; with `words`,
    the first `words` words of the lines that have at least that many."""
    if path and Path(path).is_file():
        rows = [line.split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
        col = rows[0].index(column) if column else 0
        texts = [r[col] for r in rows[1 if column else 0:]]
    else:
        texts = ["crossway", "attention", "phoneme", "serving", "benchmark"]
    if words:
        texts = [" ".join(t.split()[:words]) for t in texts if len(t.split()) >= words]
    return [texts[i % len(texts)] for i in range(n)]


class Connection:
    """One keep-alive HTTP/1.1 connection with pre-encoded requests: a load generator that costs the shared cores
    far less per request than a general HTTP client (httpx spends ~1 ms of CPU per request, which on two cores is
    taken from the server being measured)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        if headers.get("connection") == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def raw_post(path: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def drive(url: str, inputs: list[str], clients: int, options: dict) -> dict:
    """`clients` connections send the requests (one input each) as fast as the answers come."""
    latencies, statuses, errors = [], collections.Counter(), collections.Counter()
    requests = [raw_post("/v1/translate", {"inputs": [x], "options": options}) for x in inputs]
    next_index = iter(range(len(inputs)))
    host, port = url.split("//")[1].split(":")

    async def worker():
        conn = Connection(host, int(port))
        for i in next_index:
            t0 = time.perf_counter()
            try:
                status, body = await conn.request(requests[i])
                statuses[status] += 1
                if status == 200:
                    json.loads(body)["outputs"][0]["text"]
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as e:
                errors[type(e).__name__] += 1
                continue
            latencies.append(time.perf_counter() - t0)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return summary(latencies, statuses, errors, time.perf_counter() - t0)


async def drive_httpx(url: str, inputs: list[str], clients: int, options: dict) -> dict:
    """The same load from httpx's AsyncClient (a general-purpose client, for comparison: `--client httpx`)."""
    latencies, statuses, errors = [], collections.Counter(), collections.Counter()
    next_index = iter(range(len(inputs)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            for i in next_index:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/translate", json={"inputs": [inputs[i]], "options": options})
                    statuses[r.status_code] += 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return summary(latencies, statuses, errors, wall)


def summary(latencies: list[float], statuses, errors, wall: float) -> dict:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"wall_s": wall, "answered": len(latencies), "statuses": dict(statuses), "errors": dict(errors),
            "rps": len(latencies) / wall, "p50_ms": 1000 * q[49], "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98]}


def run_config(name: str, args, inputs: list[str]) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "crossway", "serve", "--model", args.model, "--port", str(port), "--threads",
           str(args.threads), "--max-queue", str(args.max_queue), "--log-level", "warning", "--max-batch-inputs",
           str(args.max_batch_inputs), *CONFIGS[name]]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > until or proc.poll() is not None:
                raise SystemExit(f"{name}: the server did not become ready")
            time.sleep(0.1)
        options = json.loads(args.options)
        if args.warmup:  # the allocators' working set for this load first: growth after it is what would leak
            asyncio.run(drive(url, inputs[:args.warmup], args.clients, options))
        rss_before = rss_mib(proc.pid)
        calls_before = httpx.get(url + "/v1/stats", timeout=5).json()["queue"]["calls"]
        cpu_before, client_before = cpu_s(proc.pid), os.times()
        result = asyncio.run((drive_httpx if args.client == "httpx" else drive)(url, inputs, args.clients, options))
        cpu_after, client_after = cpu_s(proc.pid), os.times()
        result["client_cpu_ms"] = 1000 * (client_after.user + client_after.system - client_before.user
                                          - client_before.system) / len(inputs)
        result["http_cpu_ms"], result["model_cpu_ms"] = (1000 * (b - a) / len(inputs)
                                                         for a, b in zip(cpu_before, cpu_after, strict=True))
        stats = httpx.get(url + "/v1/stats", timeout=5).json()
        result.update(config=name, rss_before_mib=rss_before, rss_after_mib=rss_mib(proc.pid),
                      model_calls=stats["queue"]["calls"] - calls_before, sent=len(inputs))
        result["lost"] = result["sent"] - result["answered"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


def library_throughput(args, inputs: list[str]) -> float:
    """Inputs per second of `crossway.load(model).translate` on the same inputs and options, in batches of
    --max-batch-inputs, with the server's thread count."""
    import torch

    import crossway

    torch.set_num_threads(args.threads)
    model = crossway.load(args.model)
    options = json.loads(args.options)
    model.translate(inputs[:args.max_batch_inputs], **options)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(inputs), args.max_batch_inputs):
        model.translate(inputs[i:i + args.max_batch_inputs], **options)
    return len(inputs) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory to serve")
    p.add_argument("--data", default=str(ROOT / "data/g2p/test.tsv"), help="TSV whose first column gives inputs")
    p.add_argument("--column", help="the inputs' column, by its name in the TSV's header row")
    p.add_argument("--words", type=int, default=0, help="inputs of this many words (lines with fewer are skipped)")
    p.add_argument("--max-batch-inputs", type=int, default=64, help="the server's inputs per model call, and the "
                                                                    "library's batch size")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--options", default='{"strategy": "greedy"}', help="decoding options of every request (JSON)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: raw keep-alive HTTP/1.1 (cheap) or httpx.AsyncClient")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--warmup", type=int, default=200, help="requests sent before the measured ones (RSS before "
                                                           "is taken after them)")
    p.add_argument("--rss-budget-mib", type=float, default=64, help="allowed growth of the server's RSS under load")
    p.add_argument("--out", default=str(ROOT / "bench/out/serve.json"))
    args = p.parse_args()
    inputs = load_inputs(args.data, args.requests, args.column, args.words)
    results = [run_config(name, args, inputs) for name in args.configs.split(",")]
    library = library_throughput(args, inputs)
    print(f"\n{args.requests} requests, {args.clients} concurrent clients ({args.client} client, "
          f"{sum(r['client_cpu_ms'] for r in results) / len(results):.2f} ms of CPU per request), model {args.model}, "
          f"options {args.options}, server threads {args.threads}\n")
    print("| configuration | req/s | p50 ms | p90 ms | p99 ms | statuses | lost | model calls "
          "| RSS before -> after MiB | CPU ms/request: server + model processes | server / library |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        r["library_ratio"] = r["rps"] / library
        print(f"| {r['config']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['statuses']}{' errors ' + str(r['errors']) if r['errors'] else ''} | {r['lost']} | "
              f"{r['model_calls']} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} | "
              f"{r['http_cpu_ms']:.2f} + {r['model_cpu_ms']:.2f} | {r['library_ratio']:.2f} |")
    print(f"| library, batches of {args.max_batch_inputs} | {library:.0f} | | | | | | | | "
          f"{1000 / library:.2f} | 1.00 |")
    for r in results:
        growth = r["rss_after_mib"] - r["rss_before_mib"]
        ok = growth <= args.rss_budget_mib and r["lost"] == 0
        print(f"{r['config']}: RSS growth {growth:+.0f} MiB (budget {args.rss_budget_mib:g}), lost {r['lost']}: "
              f"{'within budget' if ok else 'OVER BUDGET OR LOST REQUESTS'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"library_inputs_per_s": library, "servers": results}, indent=2) + "\n",
                              encoding="utf-8")


if __name__ == "__main__":
    main()
