"""What the HTTP layer and the load generator cost on their own: GET /health (no model work) from 50 and from 4
httpx clients for 20 s each, against `tigerrec serve` on the same cores (``serve_load.start_server``).

    python benchmarks/http_overhead.py runs/beauty \\
        --out benchmarks/results/2026-12-07-decode-rate/http_overhead_beauty.json

With every request served from Python by both sides, requests/s here bound what ``serve_load.py`` can reach at
the same concurrency, whatever the model costs.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import serve_load

from tigerrec.cli import serving_threads
from tigerrec.device import provenance


async def health_rate(url: str, clients: int, seconds: float) -> float:
    """Answered GET /health per second from ``clients`` clients over ``seconds``."""
    answered, stop = 0, time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)  # as serve_load
    async with httpx.AsyncClient(limits=limits) as client:

        async def one():
            nonlocal answered
            while time.monotonic() < stop:
                response = await client.get(url + "/health")  # awaited before the shared count is read
                answered += response.status_code == 200

        await asyncio.gather(*(one() for _ in range(clients)))
    return answered / seconds


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
    with tempfile.TemporaryDirectory() as tmp:
        proc = serve_load.start_server(args.run_dir, host, port, 300, Path(tmp) / "server.log")
        try:
            url = f"http://{host}:{port}"
            rates = {f"clients_{n}": round(asyncio.run(health_rate(url, n, args.seconds)), 1) for n in (50, 4)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"route": "GET /health", "requests_per_s": rates, "seconds_per_point": args.seconds,
              "server_threads": serving_threads(), **provenance(),
              "note": "server and httpx clients share the machine's CPUs"}  # fmt: skip
    return serve_load.write_result(args, result)


if __name__ == "__main__":
    main()
