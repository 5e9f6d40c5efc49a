"""What the HTTP layer and the load generator cost on their own: GET /health (no model work) from 50 and from 4
clients for 20 s each, against `tigerrec serve` on the same cores (``serve_load.start_server``), with two client
libraries: aiohttp (what ``serve_load.py`` uses) and httpx (what it used before).

    python benchmarks/http_overhead.py runs/beauty \\
        --out benchmarks/results/2026-12-07-decode-rate/http_overhead_clients_beauty.json

Each point records requests/s and the CPU milliseconds per request of the server process and of the clients. With
every request served from Python by both sides, requests/s here bound what ``serve_load.py`` can reach at the same
concurrency, whatever the model costs; on shared cores the clients' CPU is taken from the server.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import serve_load

from tigerrec.cli import serving_workers
from tigerrec.device import provenance


async def health_point(url: str, client: str, clients: int, seconds: float, server_pid: int) -> dict:
    """Answered GET /health per second from ``clients`` clients of library ``client`` over ``seconds``."""
    answered, stop = 0, time.monotonic() + seconds

    async def aiohttp_loop(session):
        nonlocal answered
        while time.monotonic() < stop:
            async with session.get(url + "/health") as response:
                await response.read()
                answered += response.status == 200  # awaited before the shared count is read

    async def httpx_loop(session):
        nonlocal answered
        while time.monotonic() < stop:
            response = await session.get(url + "/health")
            answered += response.status_code == 200

    if client == "aiohttp":
        session, loop = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)), aiohttp_loop
    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        session, loop = httpx.AsyncClient(limits=limits), httpx_loop
    async with session:
        before = serve_load.cpu_marks(server_pid)
        await asyncio.gather(*(loop(session) for _ in range(clients)))
        cpu = serve_load.cpu_ms_per_request(server_pid, before, answered)
    return {"requests_per_s": round(answered / seconds, 1), "cpu_ms_per_request": cpu}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    host = "127.0.0.1"
    port = serve_load.free_port(host)
    points = {}
    workers_threads = serving_workers()
    with tempfile.TemporaryDirectory() as tmp:
        proc = serve_load.start_server(args.run_dir, host, port, 300, Path(tmp) / "server.log", *workers_threads)
        try:
            url = f"http://{host}:{port}"
            for client in ("aiohttp", "httpx"):
                for n in (50, 4):
                    points[f"{client}_clients_{n}"] = asyncio.run(health_point(url, client, n, args.seconds, proc.pid))
                    print(client, n, points[f"{client}_clients_{n}"], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"route": "GET /health", "points": points, "seconds_per_point": args.seconds,
              "server_workers_threads": workers_threads, **provenance(),
              "note": "server and clients share the machine's CPUs"}  # fmt: skip
    return serve_load.write_result(args, result)


if __name__ == "__main__":
    main()
