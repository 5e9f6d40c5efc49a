"""Load test of `tigerrec serve`: concurrent clients posting random histories of real item ids.

Starts the server for RUN_DIR on 127.0.0.1 (a free port) in a subprocess, or uses --url,
sends --requests POST /recommend requests from --concurrency clients, and prints
throughput, latency percentiles and the error count as JSON (also to --out).

    python benchmarks/serve_load.py runs/beauty --requests 10000 --concurrency 50 \\
        --out benchmarks/results/2026-11-28-serving/serve_load_beauty.json
    python benchmarks/serve_load.py runs/beauty runs/beauty-rpg --requests 3000   # two models, one after the other
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from tigerrec.device import provenance
from tigerrec.rundir import ITEMS_FILE, read_items

log = logging.getLogger("serve_load")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, host: str, port: int, timeout: float, log_path: Path) -> subprocess.Popen:
    """`tigerrec serve` in a subprocess; returns once /health answers."""
    cmd = [
        sys.executable,
        "-m",
        "tigerrec.cli",
        "serve",
        str(run_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://{host}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"server did not answer /health within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def random_bodies(item_ids: list[str], n: int, max_history: int, k: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_history + 1, size=n)
    return [
        {"history": [item_ids[i] for i in rng.choice(len(item_ids), size=length, replace=False)], "k": k}
        for length in lengths
    ]


async def run_load(url: str, bodies: list[dict], concurrency: int, timeout: float) -> tuple[np.ndarray, Counter, float]:
    """(latency of each request in seconds, status counts, wall seconds)."""
    latencies = np.full(len(bodies), np.nan)
    statuses: Counter = Counter()
    order = itertools.count()  # shared work queue: each client takes the next request

    async def client_loop(client: httpx.AsyncClient):
        while (i := next(order)) < len(bodies):
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/recommend", json=bodies[i])
                status = str(response.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies[i] = time.perf_counter() - start
            statuses[status] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return latencies, statuses, time.perf_counter() - start


def measure(run_dir: Path, args) -> dict:
    """Start a server for ``run_dir`` (or use --url), load it, and summarise."""
    item_ids = list(read_items(run_dir / ITEMS_FILE))
    bodies = random_bodies(
        item_ids, args.warmup + args.requests, min(args.max_history, len(item_ids)), args.k, args.seed
    )
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            url = args.url
            if url is None:
                host = "127.0.0.1"
                port = free_port(host)
                proc = start_server(run_dir, host, port, timeout=300, log_path=Path(tmp) / "server.log")
                url = f"http://{host}:{port}"
            health = httpx.get(f"{url}/health", timeout=10).json()
            log.info("server %s: %s", url, health)
            asyncio.run(run_load(url, bodies[: args.warmup], min(args.concurrency, max(args.warmup, 1)), args.timeout))
            log.info("%d requests from %d clients ...", args.requests, args.concurrency)
            latencies, statuses, seconds = asyncio.run(
                run_load(url, bodies[args.warmup :], args.concurrency, args.timeout)
            )
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)

    ok = latencies[np.isfinite(latencies)] * 1000
    return {
        "run_dir": str(run_dir),
        "model": health.get("model"),
        "items": health.get("items"),
        "device": health.get("device"),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "k": args.k,
        "max_history": args.max_history,
        "seconds": round(seconds, 2),
        "throughput_rps": round(args.requests / seconds, 1),
        "latency_ms": {
            name: round(float(np.percentile(ok, q)), 2)
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "errors": sum(count for status, count in statuses.items() if status != "200"),
        "status_counts": dict(statuses),
        **provenance(),
        "note": f"client and server share the machine's {os.cpu_count()} CPUs",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        help="run directories written by `tigerrec run`; several are measured one after another, "
        "with throughput ratios against the first",
    )
    parser.add_argument("--url", help="use a running server instead of starting one, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--max-history", type=int, default=20, help="histories have 1..this many items")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.url and len(args.run_dirs) > 1:
        parser.error("--url serves one run; give one run directory with it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one log line per request otherwise

    runs = [measure(run_dir, args) for run_dir in args.run_dirs]
    result = (
        runs[0]
        if len(runs) == 1
        else {
            "runs": runs,
            "throughput_ratio_vs_first": [round(r["throughput_rps"] / runs[0]["throughput_rps"], 2) for r in runs],
        }
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
