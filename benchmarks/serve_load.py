"""Load test of `tigerrec serve` against the offline decode rate of the same run, on the same machine.

    python benchmarks/serve_load.py runs/beauty --data-dir ../shared/data/beauty --seconds 60 \\
        --out benchmarks/results/2026-12-07-serving/serve_load_beauty_m1.json

1. **Offline rate**: ``evaluate`` over every test user with the served beam, k = 10, history excluded
   (what ``tigerrec run`` measures; ``metrics_json_users_per_s`` is the rate its metrics.json records).
2. **Served**: a copy of the run served by ``tigerrec serve`` (a subprocess, 127.0.0.1, an API key), and
   aiohttp clients on the same cores posting the real test histories (k = 10, seen items excluded) for
   ``--seconds`` each, at 50 and at 4 clients: throughput, latency percentiles, errors (any non-200), and
   the CPU milliseconds each request cost the server process and the clients.
3. **With reloads**: the 50-client load again, with a POST /admin/reload every 5 s and, half-way, one
   ``tigerrec add-items`` of ``--new-items`` items (existing items' text under new ids) into the served
   copy. Its requests ask for one reserved new-item slot (``max_new_share`` 0.1, ``reserve_new``): every
   request must be answered, and after the swap every list holds a new item.

``--offline-only`` measures the offline rate alone (1.), e.g. to compare two versions of the decoder.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np

from tigerrec.cli import serving_workers
from tigerrec.data import leave_one_out
from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import evaluate
from tigerrec.fusion import load_fusion
from tigerrec.io import read_json
from tigerrec.ledger import record_test
from tigerrec.pipeline import load_trained_run
from tigerrec.rundir import ITEMS_FILE, METRICS_FILE, read_items

log = logging.getLogger("serve_load")
API_KEY = "load-test-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(
    run_dir: Path, host: str, port: int, timeout: float, log_path: Path, workers: int, threads: int
) -> subprocess.Popen:
    """`tigerrec serve --admin` in a subprocess; returns once /health answers."""
    cmd = [sys.executable, "-m", "tigerrec.cli", "serve", str(run_dir), "--host", host, "--port", str(port)]
    cmd += ["--no-access-log", "--admin", "--workers", str(workers), "--threads", str(threads)]
    env = {**os.environ, "TIGERREC_API_KEY": API_KEY}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:  # not listening yet (URLError and connection errors are OSErrors)
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"server did not answer /health within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def offline_rate(run_dir: Path, data_dir: Path) -> tuple[dict, list[list[str]]]:
    """The run's offline decode rate on its test users, and their histories as item ids."""
    cfg, dataset, data, test, model = load_trained_run(run_dir, data_dir)
    beam = max(10, cfg.eval.beam_size)  # what serving decodes with for k = 10
    bf16 = use_bf16("cpu", cfg.train.bf16)
    metrics = evaluate(
        model, data.tokenizer, data.trie, test, data.user_tokens, beam, 10, cfg.eval.batch_size, bf16,
        exclude_history=True, fusion=load_fusion(run_dir, cfg),  # as served: re-ranked when the run fuses
    )  # fmt: skip
    record_test(dataset.name, cfg.to_dict(), "serve_load offline rate", {"history_excluded": metrics})
    recorded = read_json(run_dir / METRICS_FILE)
    recorded_test = recorded.get("test_protocols", {}).get("history_excluded", recorded["test"])
    split = leave_one_out(dataset, cfg.data.backtest)
    histories = [[dataset.item_ids[i] for i in h] for h in split.test_history]
    return {
        "offline_users_per_s": round(len(test) / metrics["seconds"], 1),
        "offline_seconds": metrics["seconds"],
        "offline_test": {k: metrics[k] for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")},
        "metrics_json_users_per_s": round(len(test) / recorded_test["seconds"], 1),
        "metrics_json_test": {k: recorded_test[k] for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")},
        "beam": beam,
        "test_users": len(test),
    }, histories


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) a process has used so far: this one, or ``pid`` (Linux's /proc; None elsewhere)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_ms_per_request(server_pid: int | None, before: tuple, requests: int) -> dict:
    """What each request cost the server process and the load generator, in CPU milliseconds, since
    ``before`` (from ``cpu_marks``): on shared cores the clients' share is taken from the server."""
    after = cpu_marks(server_pid)
    spent = [None if a is None or b is None else (a - b) * 1000 / max(requests, 1) for a, b in zip(after, before)]
    return {name: None if ms is None else round(ms, 2) for name, ms in zip(("server", "clients"), spent)}


def cpu_marks(server_pid: int | None) -> tuple:
    return cpu_seconds(server_pid) if server_pid else None, cpu_seconds()


async def load(url: str, bodies, clients: int, seconds: float, server_pid: int | None = None) -> dict:
    """``clients`` clients posting ``bodies`` in turn for ``seconds``: latencies, statuses, responses, and the
    CPU each request cost the server and the clients.

    The clients are aiohttp's: on the same cores as the server, the load generator's own CPU comes out of the
    server's, and httpx's async client costs several times more per request (``http_overhead.py``)."""
    latencies, statuses, answered = [], Counter(), []
    order = itertools.count()
    payloads = [json.dumps(body).encode() for body in bodies]  # encoded once, not in the timed loop
    headers = {**HEADERS, "Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds

    async def client_loop(session: aiohttp.ClientSession):
        while time.perf_counter() < deadline:
            payload = payloads[next(order) % len(payloads)]
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/recommend", data=payload, headers=headers) as response:
                    status = str(response.status)
                    body = await response.read()
                if response.status == 200:
                    answered.append((start, body))
            except (aiohttp.ClientError, TimeoutError) as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        before = cpu_marks(server_pid)
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(clients)))
        wall = time.perf_counter() - start
        cpu = cpu_ms_per_request(server_pid, before, len(latencies))
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / wall, 1),
        "latency_ms": {name: round(float(np.percentile(ms, q)), 1) for name, q in (("p50", 50), ("p99", 99))},
        "errors": sum(n for status, n in statuses.items() if status != "200"),
        "status_counts": dict(statuses),
        "cpu_ms_per_request": cpu,
        "_answered": answered,
    }


async def load_with_reloads(url: str, bodies, run_copy: Path, new_items: Path, seconds: float) -> dict:
    """The 50-client load with a reload every 5 s and one add-items half-way (then a reload)."""
    reloads, added_at = [], []

    async def reloader():
        # A new connection per reload: a kept-alive one idles 5 s between reloads (longer around add-items),
        # which is uvicorn's keep-alive timeout, and the server may close it just as it is reused.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                await asyncio.sleep(5)
                if not added_at and time.perf_counter() - start >= seconds / 2:
                    add = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "tigerrec.cli", "add-items", str(run_copy), str(new_items),
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    )  # fmt: skip
                    if await add.wait() != 0:
                        raise RuntimeError("tigerrec add-items failed")
                async with session.post(f"{url}/admin/reload", headers=HEADERS) as response:
                    reloads.append(response.status)
                    if response.status == 200 and not added_at and (await response.json())["new_items"] > 0:
                        added_at.append(time.perf_counter())

    result, _ = await asyncio.gather(load(url, bodies, 50, seconds), reloader())
    answered = result.pop("_answered")
    after = [json.loads(body)["recommendations"] for start, body in answered if added_at and start > added_at[0]]
    return {
        "requests": result["requests"],
        "answered": result["status_counts"].get("200", 0),
        "errors": result["errors"],
        "status_counts": result["status_counts"],
        "reloads": sum(status == 200 for status in reloads),
        "reload_statuses": reloads,
        "latency_ms": result["latency_ms"],
        "requests_after_swap": len(after),
        "new_items_in_top_k": round(float(np.mean([any(r["new"] for r in recs) for recs in after])), 4)
        if after
        else None,
    }


def new_items_table(run_dir: Path, path: Path, n: int) -> Path:
    """``n`` existing items' text under new ids: items the served catalogue does not hold yet."""
    items = list(read_items(run_dir / ITEMS_FILE).items())[:n]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["item_id", "title", "brand", "categories"])
        writer.writeheader()
        for item, meta in items:
            categories = meta.get("categories") or []
            writer.writerow(
                {
                    "item_id": f"new-{item}",
                    "title": meta.get("title") or "",
                    "brand": meta.get("brand") or "",
                    "categories": " > ".join(categories[0]) if categories else "",
                }
            )
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished `tigerrec run` directory (it is not changed)")
    parser.add_argument("--data-dir", type=Path, required=True, help="the run's dataset (its test histories)")
    parser.add_argument("--seconds", type=float, default=60, help="length of each load point")
    parser.add_argument("--new-items", type=int, default=50)
    parser.add_argument("--workers", type=int, help="the server's model workers (default: tigerrec serve's)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: tigerrec serve's)")
    parser.add_argument("--offline-only", action="store_true", help="measure the offline decode rate alone")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    result, histories = offline_rate(args.run_dir, args.data_dir)
    log.info("offline: %s", result)
    if args.offline_only:
        return write_result(args, {**result, "run_dir": str(args.run_dir), "k": 10, **provenance()})
    workers, threads = serving_workers(args.workers, args.threads)
    bodies = [{"history": h, "k": 10} for h in histories]
    reserved = [{**body, "max_new_share": 0.1, "reserve_new": True} for body in bodies]
    with tempfile.TemporaryDirectory() as tmp:
        run_copy = Path(shutil.copytree(args.run_dir, Path(tmp) / "run"))
        host = "127.0.0.1"
        port = free_port(host)
        proc = start_server(run_copy, host, port, 300, Path(tmp) / "server.log", workers, threads)
        url = f"http://{host}:{port}"
        try:
            asyncio.run(load(url, bodies, 4, 5))  # warm-up, untimed
            for clients in (50, 4):
                point = asyncio.run(load(url, bodies, clients, args.seconds, proc.pid))
                point.pop("_answered")
                result[f"clients_{clients}"] = point
                log.info("%d clients: %s", clients, point)
            new = new_items_table(args.run_dir, Path(tmp) / "new.csv", args.new_items)
            result["with_reloads"] = asyncio.run(load_with_reloads(url, reserved, run_copy, new, args.seconds))
            log.info("with reloads: %s", result["with_reloads"])
        except BaseException:
            log.error("the server's log ends:\n%s", (Path(tmp) / "server.log").read_text()[-3000:])
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result["served_share_of_offline"] = round(result["clients_50"]["throughput_rps"] / result["offline_users_per_s"], 3)
    result.update(
        {
            "run_dir": str(args.run_dir),
            "k": 10,
            "seconds_per_point": args.seconds,
            "server_workers": workers,
            "server_threads": threads,
            **provenance(),
            "note": f"server and aiohttp clients share the machine's {os.cpu_count()} CPUs; real test histories, "
            "seen items excluded",
        }
    )
    return write_result(args, result)


def write_result(args, result: dict) -> dict:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
