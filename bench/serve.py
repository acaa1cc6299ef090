"""Serving load test on loopback: `crossway serve` in a subprocess, many concurrent HTTP clients, a fixed number
of requests. Run once with micro-batching and once without (one model call per request), side by side.

    python bench/serve.py --model runs/g2p-rnn --data data/g2p/test.tsv --clients 200 --requests 2000

Prints, per configuration: throughput (requests/s), latency p50/p90/p99, status-code counts, lost requests
(sent but never answered), model calls, and the server's resident memory before and after the load.
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
CONFIGS = {  # name -> extra `crossway serve` flags
    "micro-batched": ["--batch-wait-ms", "5", "--max-batch-inputs", "64"],
    "one call per request": ["--batch-wait-ms", "0", "--max-batch-inputs", "1"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_inputs(path: str | None, n: int) -> list[str]:
    if path and Path(path).is_file():
        words = [line.split("\t")[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    else:
        words = ["crossway", "attention", "phoneme", "serving", "benchmark"]
    return [words[i % len(words)] for i in range(n)]


async def drive(url: str, inputs: list[str], clients: int, options: dict) -> dict:
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
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"wall_s": wall, "answered": len(latencies), "statuses": dict(statuses), "errors": dict(errors),
            "rps": len(latencies) / wall, "p50_ms": 1000 * q[49], "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98]}


def run_config(name: str, args, inputs: list[str]) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "crossway", "serve", "--model", args.model, "--port", str(port), "--threads",
           str(args.threads), "--max-queue", str(args.max_queue), "--log-level", "warning", *CONFIGS[name]]
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
        rss_before = rss_mib(proc.pid)
        options = json.loads(args.options)
        result = asyncio.run(drive(url, inputs, args.clients, options))
        stats = httpx.get(url + "/v1/stats", timeout=5).json()
        result.update(config=name, rss_before_mib=rss_before, rss_after_mib=rss_mib(proc.pid),
                      model_calls=stats["queue"]["calls"], sent=len(inputs))
        result["lost"] = result["sent"] - result["answered"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory to serve")
    p.add_argument("--data", default=str(ROOT / "data/g2p/test.tsv"), help="TSV whose first column gives inputs")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--options", default='{"strategy": "greedy"}', help="decoding options of every request (JSON)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--rss-budget-mib", type=float, default=64, help="allowed growth of the server's RSS under load")
    p.add_argument("--out", default=str(ROOT / "bench/out/serve.json"))
    args = p.parse_args()
    inputs = load_inputs(args.data, args.requests)
    results = [run_config(name, args, inputs) for name in args.configs.split(",")]
    print(f"\n{args.requests} requests, {args.clients} concurrent clients, model {args.model}, options {args.options}, "
          f"server threads {args.threads}\n")
    print("| configuration | req/s | p50 ms | p90 ms | p99 ms | statuses | lost | model calls "
          "| RSS before -> after MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['statuses']}{' errors ' + str(r['errors']) if r['errors'] else ''} | {r['lost']} | "
              f"{r['model_calls']} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} |")
    for r in results:
        growth = r["rss_after_mib"] - r["rss_before_mib"]
        ok = growth <= args.rss_budget_mib and r["lost"] == 0
        print(f"{r['config']}: RSS growth {growth:+.0f} MiB (budget {args.rss_budget_mib:g}), lost {r['lost']}: "
              f"{'within budget' if ok else 'OVER BUDGET OR LOST REQUESTS'}")
    if len(results) == 2:
        print(f"\nthroughput ratio {results[0]['config']} / {results[1]['config']}: "
              f"{results[0]['rps'] / results[1]['rps']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
