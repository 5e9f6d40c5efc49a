"""What the HTTP layer and the load generator cost on their own: GET /health (no model work) from 50 and from 4
httpx clients for 20 s each, against `tigerrec serve`'s app on the same cores (one model thread).

    python benchmarks/http_overhead.py runs/beauty \\
        --out benchmarks/results/2026-12-07-decode-rate/http_overhead_beauty.json

With every request served from Python by both sides, requests/s here bound what ``serve_load.py`` can reach at
the same concurrency, whatever the model costs.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import serve_load

from tigerrec.device import provenance

# The app as `tigerrec serve` runs it on 2 cores: one model thread.
LAUNCH = r"""
import sys, torch, uvicorn
from tigerrec.serve import create_app
torch.set_num_threads(1)
uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


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
    port = serve_load.free_port("127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(args.run_dir), str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    try:
        rates = {f"clients_{n}": round(asyncio.run(health_rate(url, n, args.seconds)), 1) for n in (50, 4)}
    finally:
        proc.terminate()
        proc.wait()
    result = {"route": "GET /health", "requests_per_s": rates, "seconds_per_point": args.seconds, **provenance(),
              "note": "server (one model thread) and httpx clients share the machine's CPUs"}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
