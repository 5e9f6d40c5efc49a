"""Fuzzing the HTTP API with hypothesis: no input may produce a 5xx.

Bodies are generated from the request schema, field by field (every field: the filters
``exclude``, ``only`` and ``category``, and ``max_new_share`` / ``reserve_new`` too), with valid
values (real item ids and categories, k in range) mixed with wrong types, huge integers,
NaN/Infinity, arbitrary unicode (lone surrogates included), missing and unknown fields, plus
arbitrary JSON documents, raw bytes and odd item paths. Meanwhile ``--clients`` background
clients post valid requests with random filters, and in process the run is reloaded every 5 s,
so the fuzzed requests share the batcher with others and cross reloads. Runs in-process with
FastAPI's TestClient (or against --url) and prints status counts as JSON.

    pip install hypothesis
    python benchmarks/serve_fuzz.py runs/beauty --examples 2000 \
        --out benchmarks/results/2026-12-07-serving/serve_fuzz_beauty_m1.json
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

log = logging.getLogger("serve_fuzz")

# Every unicode character including lone surrogates, which JSON can carry as "\ud800".
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
huge_ints = st.integers(min_value=-(2**200), max_value=2**200)
scalars = st.none() | st.booleans() | st.integers() | huge_ints | st.floats() | any_text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5), max_leaves=15
)


def request_bodies(item_ids: list[str], max_k: int, categories: list[str]):
    real_id = st.sampled_from(item_ids)
    real_category = st.sampled_from(categories) if categories else any_text
    share = st.floats() | st.integers(-2, 3) | any_text | st.booleans() | st.none()
    item = real_id | real_id | any_text | st.integers() | json_values
    history = (
        st.lists(real_id, min_size=1, max_size=30)
        | st.lists(item, max_size=30)
        | st.lists(real_id, min_size=990, max_size=1010)
        | json_values
    )
    fields = {
        "history": history,
        "k": st.integers(-2, max_k + 2) | huge_ints | st.floats() | any_text | st.booleans() | st.none(),
        "temperature": st.floats() | st.integers(-3, 300) | huge_ints | any_text | st.none(),
        "user_id": any_text | st.integers() | st.none() | json_values,
        "exclude_seen": st.booleans() | st.integers() | any_text | st.none(),
        "seed": st.integers(-5, 10) | huge_ints | st.floats() | st.none(),
        "exclude": st.lists(item, max_size=30) | json_values,
        "only": st.lists(item, max_size=30) | json_values,
        "category": real_category | any_text | st.integers() | json_values,
        "max_new_share": share,
        "reserve_new": st.booleans() | st.integers() | any_text | st.none(),
    }
    # Valid bodies reach the model; valid ones with one field replaced probe each constraint alone.
    valid = st.fixed_dictionaries(
        {"history": st.lists(real_id, min_size=1, max_size=30)},
        optional={
            "k": st.integers(1, max_k),
            "temperature": st.floats(0.01, 100) | st.none(),
            "user_id": any_text | st.none(),
            "exclude_seen": st.booleans(),
            "seed": st.integers(0, 2**63 - 1) | st.none(),
            "exclude": st.lists(real_id, max_size=10),
            "only": st.lists(real_id, min_size=1, max_size=50),
            "category": real_category,
            "max_new_share": st.floats(0, 1),
            "reserve_new": st.booleans(),
        },
    )
    one_bad = st.tuples(valid, st.sampled_from(sorted(fields)), st.data()).map(
        lambda t: {**t[0], t[1]: t[2].draw(fields[t[1]])}
    )
    body = st.fixed_dictionaries({}, optional=fields)
    with_extra = st.tuples(valid | body, st.dictionaries(any_text, json_values, min_size=1, max_size=2)).map(
        lambda t: {**t[1], **t[0]}
    )
    return st.one_of(valid, one_bad, one_bad, body, with_extra, json_values)


def make_client(run_dir: Path | None, url: str | None):
    if url:
        import httpx

        return httpx.Client(base_url=url, timeout=120)
    from fastapi.testclient import TestClient

    from tigerrec.serve import create_app

    return TestClient(create_app(run_dir), raise_server_exceptions=False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory written by `tigerrec run`")
    parser.add_argument("--url", help="fuzz a running server instead of an in-process app")
    parser.add_argument(
        "--examples", type=int, default=1000, help="POST /recommend bodies (raw bodies and item paths: a quarter each)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=8, help="background clients posting valid requests meanwhile")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("httpx", "httpx2"):  # one log line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)

    client = make_client(args.run_dir, args.url)
    with client:  # one event loop for every thread's requests (TestClient)
        return fuzz_all(client, args)


def fuzz_all(client, args) -> dict:
    health = client.get("/health").json()
    from tigerrec.rundir import ITEMS_FILE, read_items

    item_ids = list(read_items(args.run_dir / ITEMS_FILE))
    in_process = args.url is None
    categories = sorted(client.app.state.serving.recommender.categories) if in_process else []
    statuses: dict[str, Counter] = {"json": Counter(), "raw": Counter(), "items": Counter()}
    failures: dict[str, str] = {}

    def check(kind: str, response, sent) -> None:
        statuses[kind][response.status_code] += 1
        assert response.status_code < 500, f"{response.status_code} for {sent!r}: {response.text[:300]}"

    def fuzz(kind: str, strategy, send, examples: int) -> None:
        @seed(args.seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            print_blob=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def one(value):
            check(kind, send(value), value)

        try:
            one()
        except AssertionError as e:  # hypothesis has shrunk it to a minimal failing input
            failures[kind] = str(e)[:1000]

    def post_json(body):
        content = json.dumps(body, allow_nan=True)  # NaN/Infinity tokens too: Python's parser accepts them
        return client.post("/recommend", content=content, headers={"content-type": "application/json"})

    stop, lock, background, reloads = threading.Event(), threading.Lock(), Counter(), Counter()

    def background_client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            body = {"history": rng.choice(item_ids, rng.integers(1, 21)).tolist(), "k": int(rng.integers(1, 21))}
            kind = rng.integers(4)
            if kind == 1:
                body["exclude"] = rng.choice(item_ids, 5).tolist()
            elif kind == 2:
                body["only"] = rng.choice(item_ids, 30).tolist()
            elif kind == 3 and categories:
                body["category"] = str(rng.choice(categories))
            status = client.post("/recommend", json=body).status_code
            with lock:
                background[status] += 1

    def reloader() -> None:
        while not stop.wait(5):
            client.app.state.reload()
            reloads["reloads"] += 1

    threads = [threading.Thread(target=background_client, args=(n,), daemon=True) for n in range(args.clients)]
    threads += [threading.Thread(target=reloader, daemon=True)] if in_process else []
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    fuzz("json", request_bodies(item_ids, health["max_k"], categories), post_json, args.examples)
    fuzz(
        "raw",
        st.binary(max_size=300),
        lambda raw: client.post("/recommend", content=raw, headers={"content-type": "application/json"}),
        max(1, args.examples // 4),
    )
    fuzz(
        "items",
        any_text | st.sampled_from(item_ids),
        lambda text: client.get("/items/" + quote(text, safe="", errors="surrogatepass")),
        max(1, args.examples // 4),
    )
    seconds = time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()

    counts = {kind: {str(code): n for code, n in sorted(c.items())} for kind, c in statuses.items()}
    server_errors = sum(n for c in [*statuses.values(), background] for code, n in c.items() if code >= 500)
    result = {
        "run_dir": str(args.run_dir),
        "target": args.url or "in-process TestClient",
        "requests": sum(sum(c.values()) for c in statuses.values()),
        "server_errors": server_errors,
        "status_counts": counts,
        "background_clients": args.clients,
        "background_status_counts": {str(code): n for code, n in sorted(background.items())},
        "reloads": reloads["reloads"],
        "failures": failures,
        "seconds": round(seconds, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if server_errors or failures:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
