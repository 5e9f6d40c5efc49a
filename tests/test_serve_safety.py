"""The HTTP service under trouble: reloads mid-request, cancelled and failing queries, a dead worker,
full queues, slow answers, oversized bodies and missing keys."""

import copy
import inspect
import os
import threading
import time

import pytest

from tigerrec.cli import main
from tigerrec.errors import TigerrecError
from tigerrec.recommend import MAX_QUEUE, BatcherClosed, MicroBatcher, Recommender

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tigerrec.serve import MAX_BODY_BYTES, MAX_FILTER_ITEMS, create_app  # noqa: E402

WAIT = 60  # generous: these are deadlocks caught, not timings measured


@pytest.fixture(scope="module")
def recommender(tiny_run):
    return Recommender.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def history(recommender):
    return recommender.item_ids[:4]


def gated(recommender, fail=None):
    """A copy of ``recommender`` whose model calls wait at a gate: ``entered`` is set once a call
    waits, ``release`` opens the gate; ``calls`` records each call's queries; ``fail(queries)`` may raise."""
    fake = copy.copy(recommender)
    fake.entered, fake.release, fake.calls = threading.Event(), threading.Event(), []

    def run(queries):
        fake.calls.append(list(queries))
        fake.entered.set()
        if not fake.release.wait(WAIT):
            raise RuntimeError("the test never opened the gate")
        if fail is not None:
            fail(queries)
        return recommender.run(queries)

    fake.run = run
    return fake


def wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def ids(results) -> list[str]:
    return [r["item_id"] for r in results]


# ------------------------------------------------------------------ MicroBatcher


def test_a_cancelled_query_does_not_stop_the_worker(recommender, history):
    fake = gated(recommender)
    batcher = MicroBatcher(fake)
    try:
        first = batcher.submit(recommender.query(history, k=3))
        assert fake.entered.wait(WAIT)
        given_up = batcher.submit(recommender.query(history, k=4))
        assert given_up.cancel()  # the caller timed out while it waited
        fake.release.set()
        assert len(first.result(WAIT)) == 3
        later = batcher.submit(recommender.query(history, k=5))
        assert ids(later.result(WAIT)) == ids(recommender.recommend(history, k=5))
        assert batcher.alive
        assert all(len(call) == 1 for call in fake.calls) and len(fake.calls) == 2  # the cancelled one never ran
    finally:
        fake.release.set()
        batcher.close()


def test_one_failing_query_leaves_the_others_in_its_batch_answered(recommender, history):
    def fail(queries):
        if any(q.k == 7 for q in queries):
            raise ValueError("cannot decode k=7")

    fake = gated(recommender, fail)
    batcher = MicroBatcher(fake)
    try:
        batcher.submit(recommender.query(history, k=3))
        assert fake.entered.wait(WAIT)
        good, bad, other = (batcher.submit(recommender.query(history, k=k)) for k in (3, 7, 4))
        fake.release.set()
        assert ids(good.result(WAIT)) == ids(recommender.recommend(history, k=3))
        assert ids(other.result(WAIT)) == ids(recommender.recommend(history, k=4))
        with pytest.raises(ValueError, match="cannot decode k=7"):
            bad.result(WAIT)
        assert [len(call) for call in fake.calls] == [1, 3, 1, 1, 1]  # the batch of 3 failed, then one by one
    finally:
        fake.release.set()
        batcher.close()


def test_queries_arriving_just_after_one_share_its_model_call(recommender, history):
    calls = []
    fake = copy.copy(recommender)
    fake.run = lambda queries: calls.append(len(queries)) or recommender.run(queries)
    batcher = MicroBatcher(fake, max_batch=3, gather_seconds=WAIT)  # a full batch goes before the window closes
    try:
        futures = [batcher.submit(recommender.query(history, k=k)) for k in (3, 4)]
        time.sleep(0.05)  # the worker holds the first queries and waits for more
        futures.append(batcher.submit(recommender.query(history, k=5)))
        started = time.monotonic()
        assert [len(f.result(WAIT)) for f in futures] == [3, 4, 5]
        assert calls == [3] and time.monotonic() - started < WAIT / 2
    finally:
        batcher.close()


def test_workers_decode_batches_side_by_side(recommender, history):
    both_running = threading.Barrier(2, timeout=WAIT)  # broken (an error) unless two calls run at once
    fake = copy.copy(recommender)

    def run(queries):
        both_running.wait()
        return recommender.run(queries)

    fake.run = run
    batcher = MicroBatcher(fake, max_batch=1, gather_seconds=0, workers=2)
    try:
        futures = [batcher.submit(recommender.query(history, k=k)) for k in (3, 4)]
        assert [len(f.result(WAIT)) for f in futures] == [3, 4] and batcher.alive
    finally:
        batcher.close()
    assert not batcher.alive


def test_a_catalogue_swap_waits_for_running_calls_and_goes_before_new_ones():
    from tigerrec.recommend import SharedLock

    lock, order = SharedLock(), []
    with lock.shared():
        swap = threading.Event()

        def swapper():
            with lock.exclusive():
                order.append("swap")
            swap.set()

        def caller():
            with lock.shared():
                order.append("call")

        swapping = threading.Thread(target=swapper)
        swapping.start()
        wait_until(lambda: lock._waiting == 1)  # the swap waits for the running call
        late = threading.Thread(target=caller)
        late.start()
        time.sleep(0.05)
        assert order == []  # neither the swap nor the call that came after it has run
    assert swap.wait(WAIT)
    late.join(WAIT)
    assert order == ["swap", "call"]


def test_close_answers_the_queued_queries_and_refuses_new_ones(recommender, history):
    fake = gated(recommender)
    batcher = MicroBatcher(fake)
    futures = [batcher.submit(recommender.query(history, k=3))]
    assert fake.entered.wait(WAIT)
    futures += [batcher.submit(recommender.query(history, k=k)) for k in (2, 4, 5)]
    closing = threading.Thread(target=batcher.close, args=(WAIT,))
    closing.start()
    wait_until(lambda: batcher.closed)
    with pytest.raises(BatcherClosed):
        batcher.submit(recommender.query(history, k=3))
    fake.release.set()
    closing.join(WAIT)
    assert [len(f.result(0)) for f in futures] == [3, 2, 4, 5] and not batcher.alive


# ------------------------------------------------------------------ HTTP


def test_a_request_that_read_the_batcher_before_a_reload_is_answered_by_the_new_one(tiny_run, history):
    old = copy.copy(Recommender.load(tiny_run, device="cpu"))
    entered, release = threading.Event(), threading.Event()
    check = old.query

    def slow_query(*args, **kwargs):  # the request has read the old pair and is checking its body
        entered.set()
        release.wait(WAIT)
        return check(*args, **kwargs)

    old.query = slow_query
    app = create_app(old)
    client = TestClient(app, raise_server_exceptions=False)
    answers = []
    request = threading.Thread(
        target=lambda: answers.append(client.post("/recommend", json={"history": history, "k": 3})), daemon=True
    )
    request.start()
    try:
        assert entered.wait(WAIT)
        app.state.reload()  # swaps in a new run and batcher, closes the old one
    finally:
        release.set()
    request.join(WAIT)
    assert not request.is_alive(), "the request submitted to the closed batcher was never answered"
    assert answers[0].status_code == 200 and len(answers[0].json()["recommendations"]) == 3
    assert app.state.serving.recommender is not old
    app.state.serving.batcher.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker's death, on purpose
def test_a_dead_worker_makes_health_503_and_the_next_request_restarts_it(recommender, history):
    fake = copy.copy(recommender)
    calls = []

    def run(queries):
        calls.append(len(queries))
        if len(calls) == 1:
            raise SystemExit("the worker dies")  # what no job handler may swallow
        return recommender.run(queries)

    fake.run = run
    app = create_app(fake)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/health").json()["status"] == "ok"
    dying = client.post("/recommend", json={"history": history, "k": 3})
    assert dying.status_code == 503 and "worker stopped" in dying.json()["message"]
    batcher = app.state.serving.batcher
    wait_until(lambda: not batcher.alive)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert set(health.json()) == set(client.app.openapi()["components"]["schemas"]["Health"]["properties"])
    answered = client.post("/recommend", json={"history": history, "k": 3})
    assert answered.status_code == 200 and ids(answered.json()["recommendations"]) == ids(
        recommender.recommend(history, k=3)
    )
    assert batcher.alive and client.get("/health").status_code == 200
    batcher.close()


def test_a_full_queue_at_its_default_bound_is_a_503_with_retry_after(recommender, history):
    assert inspect.signature(create_app).parameters["max_queue"].default == MAX_QUEUE == 1024
    fake = gated(recommender)
    app = create_app(fake)
    client = TestClient(app, raise_server_exceptions=False)
    batcher = app.state.serving.batcher
    query = recommender.query(history, k=3)
    try:
        futures = [batcher.submit(query)]
        assert fake.entered.wait(WAIT)  # the worker holds one batch; the rest wait
        futures += [batcher.submit(query) for _ in range(MAX_QUEUE)]
        assert batcher.queued == MAX_QUEUE
        full = client.post("/recommend", json={"history": history, "k": 3})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "queries are waiting" in full.json()["message"]
    finally:
        fake.release.set()
    assert all(len(f.result(WAIT)) == 3 for f in futures)
    assert client.post("/recommend", json={"history": history, "k": 3}).status_code == 200
    batcher.close()


def test_a_request_not_answered_in_time_is_a_504_and_is_never_run(recommender, history):
    fake = gated(recommender)
    app = create_app(fake, timeout_s=0.2)
    client = TestClient(app, raise_server_exceptions=False)
    batcher = app.state.serving.batcher
    try:
        busy = batcher.submit(recommender.query(history, k=3))  # the worker is stuck on this one
        assert fake.entered.wait(WAIT)
        late = client.post("/recommend", json={"history": history, "k": 5})
        assert late.status_code == 504 and "not answered within 0.2 s" in late.json()["message"]
        assert batcher.queued == 1  # its cancelled future waits to be skipped
    finally:
        fake.release.set()
    assert len(busy.result(WAIT)) == 3
    assert client.post("/recommend", json={"history": history, "k": 4}).status_code == 200
    assert [q.k for call in fake.calls for q in call] == [3, 4]  # the timed-out query never reached the model
    assert batcher.alive
    batcher.close()


def test_bodies_over_the_cap_are_413_before_parsing(recommender, history):
    client = TestClient(create_app(recommender, max_body_bytes=1000), raise_server_exceptions=False)
    padding = " " * 1000  # valid JSON but too long
    body = f'{{"history": ["item1"]{padding}}}'.encode()
    sized = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert sized.status_code == 413 and "larger than 1000 bytes" in sized.json()["message"]
    chunked = client.post(  # no Content-Length: the bytes are counted as they arrive
        "/recommend", content=iter([body[:600], body[600:]]), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and "larger than 1000 bytes" in chunked.json()["message"]
    small = f'{{"history": ["item1"]{padding[:900]}}}'.encode()
    fits = client.post("/recommend", content=iter([small]), headers={"content-type": "application/json"})
    assert fits.status_code == 200
    # The default cap admits the longest filter list with realistic ids (checked off the event loop).
    assert MAX_BODY_BYTES >= MAX_FILTER_ITEMS * len('"B000EXAMPLE0123456789",')
    default = TestClient(create_app(recommender), raise_server_exceptions=False)
    long_list = {"history": history, "k": 3, "exclude": [recommender.item_ids[-1]] * MAX_FILTER_ITEMS}
    answered = default.post("/recommend", json=long_list)
    assert answered.status_code == 200, answered.json()
    assert recommender.item_ids[-1] not in ids(answered.json()["recommendations"])


def test_the_api_key_guards_every_route_but_health(recommender, history):
    client = TestClient(create_app(recommender, api_key="k3y"), raise_server_exceptions=False)
    body = {"history": history, "k": 3}
    missing = client.post("/recommend", json=body)
    assert missing.status_code == 401 and "API key" in missing.json()["message"]
    assert client.post("/recommend", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/recommend", json=body, headers={"X-API-Key": "k3y0"}).status_code == 401
    assert client.post("/recommend", json=body, headers={"Authorization": "Basic k3y"}).status_code == 401
    assert client.post("/recommend", json=body, headers={"Authorization": "Bearer k3y"}).status_code == 200
    assert client.get("/items/item3", headers={"X-API-Key": "k3y"}).status_code == 200
    assert client.get("/items/item3").status_code == 401 and client.get("/openapi.json").status_code == 401
    assert client.get("/health").status_code == 200  # open to load balancers
    with pytest.raises(TigerrecError, match="admin endpoints need an API key"):
        create_app(recommender, admin=True)


def test_serve_refuses_a_public_host_without_a_key(tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("TIGERREC_API_KEY", raising=False)
    assert main(["serve", str(tiny_run), "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tigerrec: error: --host 0.0.0.0") and "API key" in error and error.count("\n") == 1
    assert main(["serve", str(tiny_run), "--admin"]) == 2
    assert "admin endpoints need an API key" in capsys.readouterr().err
    assert main(["serve", str(tiny_run), "--workers", "1", "--threads", "0"]) == 2
    assert capsys.readouterr().err == "tigerrec: error: --workers and --threads must be at least 1, not 1 and 0\n"
    assert main(["serve", str(tiny_run), "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("tigerrec: error: --workers and --threads must be at least 1, not 0")


def test_serving_decodes_on_one_single_threaded_worker_per_cpu(monkeypatch):
    from tigerrec.cli import serving_workers

    monkeypatch.setattr("tigerrec.device.default_device", lambda: "cpu")
    for cpus, expected in ((1, (1, 1)), (2, (2, 1)), (4, (4, 1)), (16, (4, 4))):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert serving_workers() == expected
    assert serving_workers(workers=2) == (2, 8) and serving_workers(workers=2, threads=1) == (2, 1)
