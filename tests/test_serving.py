import json
import math
import threading

import pytest

from tigerrec.cli import main
from tigerrec.data import make_tiny
from tigerrec.recommend import MicroBatcher, Recommender, RequestError, UnknownItemError

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tigerrec.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def recommender(tiny_run):
    return Recommender.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def client(recommender):
    return TestClient(create_app(recommender), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def history():
    dataset = make_tiny()
    return [dataset.item_ids[i] for i in dataset.sequences[0][:4]]


# ------------------------------------------------------------------ Python API


def test_recommend_returns_k_distinct_unseen_items_with_titles(recommender, history):
    results = recommender.recommend(history, k=10)
    ids = [r["item_id"] for r in results]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(history)
    for r in results:
        assert r["item_id"] in recommender
        assert r["title"] and r["categories"]
        assert r["semantic_id"] == recommender.item(r["item_id"])["semantic_id"] and len(r["semantic_id"]) == 4
        assert math.isfinite(r["score"]) and r["score"] <= 0
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)  # beam search: best first


def test_recommend_follows_the_learned_chain(recommender):
    # tiny users walk a fixed successor chain; the trained model predicts the next step.
    dataset = make_tiny()
    hits = 0
    for seq in dataset.sequences[:20]:
        history = [dataset.item_ids[i] for i in seq[:-1]]
        top = [r["item_id"] for r in recommender.recommend(history, k=10)]
        hits += dataset.item_ids[seq[-1]] in top
    assert hits >= 15


def test_long_histories_use_the_most_recent_items(recommender):
    items = recommender.item_ids
    long = items[: recommender.max_history + 10]
    recent = long[-recommender.max_history :]
    full = recommender.recommend(long, k=5, exclude_seen=False)
    assert [r["item_id"] for r in full] == [
        r["item_id"] for r in recommender.recommend(recent, k=5, exclude_seen=False)
    ]
    # exclude_seen still drops every item of the full history
    assert not {r["item_id"] for r in recommender.recommend(long, k=5)} & set(long)


def test_batch_user_and_sampling(recommender, history):
    other = recommender.item_ids[50:53]
    batch = recommender.recommend_batch([history, other], ["user0", None], k=5)
    assert [r["item_id"] for r in batch[0]] == [r["item_id"] for r in recommender.recommend(history, "user0", k=5)]
    assert [r["item_id"] for r in batch[1]] == [r["item_id"] for r in recommender.recommend(other, k=5)]
    sampled = recommender.recommend(history, k=8, temperature=1.5, seed=3)
    assert sampled == recommender.recommend(history, k=8, temperature=1.5, seed=3)
    ids = [r["item_id"] for r in sampled]
    assert len(set(ids)) == 8 and not set(ids) & set(history)
    with pytest.raises(UnknownItemError, match="'3'"):  # integer ids are looked up as strings
        recommender.recommend([3])


def test_concurrent_calls_give_the_sequential_results(recommender):
    histories = [recommender.item_ids[i : i + 3] for i in range(0, 48, 3)]
    expected = [recommender.recommend(h, k=5) for h in histories]
    got = [None] * len(histories)

    def work(i):
        got[i] = recommender.recommend(histories[i], k=5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(histories))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [[r["item_id"] for r in g] for g in got] == [[r["item_id"] for r in e] for e in expected]


def test_micro_batcher_gives_each_query_its_own_results(recommender):
    histories = [recommender.item_ids[i : i + 1 + i % 15] for i in range(40)]  # beams differ with history length
    queries = [
        recommender.query(h, k=3 + i % 4, seed=7 if i % 10 == 0 else None, temperature=1.0 if i % 10 == 0 else None)
        for i, h in enumerate(histories)
    ]
    batcher = MicroBatcher(recommender, max_batch=16)
    try:
        futures = [batcher.submit(q) for q in queries]
        got = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    expected = [recommender.run([q])[0] for q in queries]
    assert [[r["item_id"] for r in g] for g in got] == [[r["item_id"] for r in e] for e in expected]


def test_filters_are_enforced_inside_decoding_and_still_fill_k(recommender, history):
    plain = [r["item_id"] for r in recommender.recommend(history, k=10)]
    excluded = plain[:5]
    results = recommender.recommend(history, k=10, exclude=excluded)
    ids = [r["item_id"] for r in results]
    assert len(ids) == 10 and not set(ids) & (set(excluded) | set(history))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    lipsticks = recommender.categories["Lipstick"]
    in_category = recommender.recommend(history, k=10, category="Lipstick")
    assert len(in_category) == 10 and all(recommender._index[r["item_id"]] in lipsticks for r in in_category)
    assert all(any("Lipstick" in path for path in r["categories"]) for r in in_category)
    only = recommender.item_ids[90:93]
    assert sorted(r["item_id"] for r in recommender.recommend(history, k=10, only=only)) == sorted(only)
    both = recommender.recommend(history, k=10, only=only, exclude=only[:1], exclude_seen=False)
    assert sorted(r["item_id"] for r in both) == sorted(only[1:])
    batch = recommender.recommend_batch([history, history[:2]], k=4, category="Perfume", temperature=0.8, seed=1)
    assert all(any("Perfume" in path for path in r["categories"]) for rows in batch for r in rows)
    assert all(len(rows) == 4 for rows in batch)


@pytest.mark.parametrize(
    "history, kwargs, error, message",
    [
        (["item1", "nope", "zzz"], {}, UnknownItemError, "unknown item ids 'nope', 'zzz'"),
        ([], {}, RequestError, "history is empty"),
        ("item1", {}, RequestError, "must be a list of item ids"),
        (["item1", None], {}, RequestError, "item ids must be strings"),
        (["item1"], {"k": 0}, RequestError, "k must be between 1 and 100"),
        (["item1"], {"k": 101}, RequestError, "k must be between 1 and 100"),
        (["item1"], {"k": "5"}, RequestError, "k must be an integer"),
        (["item1"], {"k": True}, RequestError, "k must be an integer"),
        (["item1"], {"temperature": 0}, RequestError, "temperature must be a finite number > 0"),
        (["item1"], {"temperature": float("nan")}, RequestError, "temperature must be a finite number > 0"),
        (["item1"], {"temperature": "hot"}, RequestError, "temperature must be a number"),
        (["item1"], {"user_id": 1.5}, RequestError, "user ids must be strings"),
        (["item1"], {"exclude_seen": "yes"}, RequestError, "exclude_seen must be true or false"),
        (["item1"], {"exclude": ["item2", "nope"]}, UnknownItemError, "unknown item id 'nope'"),
        (["item1"], {"only": []}, RequestError, "only is empty"),
        (["item1"], {"only": "item2"}, RequestError, "only must be a list of item ids"),
        (["item1"], {"category": "Socks"}, RequestError, "unknown category 'Socks'"),
        (["item1"], {"category": 3}, RequestError, "category must be a string"),
    ],
)
def test_bad_requests_raise_errors_naming_the_problem(recommender, history, kwargs, error, message):
    with pytest.raises(error) as info:
        recommender.recommend(history, **kwargs)
    assert message in str(info.value)


def test_unknown_item_error_is_a_key_error_and_missing_run_files_are_named(recommender, tmp_path):
    assert issubclass(UnknownItemError, KeyError) and issubclass(RequestError, ValueError)
    with pytest.raises(KeyError):
        recommender.item("nope")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        Recommender.load(tmp_path)


def test_cli_recommend_prints_a_table(tiny_run, history, capsys):
    assert main(["recommend", str(tiny_run), "--history", ",".join(history), "-k", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "item", "id", "score", "semantic", "id", "title"]
    assert len(lines) == 4 and lines[1].split()[0] == "1"
    assert main(["recommend", str(tiny_run), "--history", "item1,nope"]) == 2
    assert (
        main(
            [
                "recommend",
                str(tiny_run),
                "--history",
                ",".join(history),
                "--only",
                "item7,item8",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(r["item_id"] for r in json.loads(capsys.readouterr().out)) == ["item7", "item8"]
    assert main(["recommend", str(tiny_run), "--history", "item1", "--category", "Socks"]) == 2
    assert "unknown category 'Socks'" in capsys.readouterr().err


# ------------------------------------------------------------------ HTTP API


def test_health_items_and_docs(client, recommender):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["items"] == recommender.num_items
    item = client.get("/items/item3").json()
    assert item["item_id"] == "item3" and item["title"] and len(item["semantic_id"]) == 4
    missing = client.get("/items/nope")
    assert missing.status_code == 404 and "unknown item id 'nope'" in missing.json()["message"]
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_http_recommend(client, history, recommender):
    response = client.post("/recommend", json={"history": history, "k": 5, "user_id": "user0"})
    assert response.status_code == 200
    results = response.json()["recommendations"]
    assert [r["item_id"] for r in results] == [r["item_id"] for r in recommender.recommend(history, "user0", k=5)]
    assert set(results[0]) >= {"item_id", "score", "semantic_id", "title", "categories"}
    sampled = client.post("/recommend", json={"history": history, "temperature": 0.7, "seed": 1, "exclude_seen": False})
    assert sampled.status_code == 200 and len(sampled.json()["recommendations"]) == 10
    filtered = client.post("/recommend", json={"history": history, "k": 3, "category": "Shampoo", "exclude": ["item0"]})
    assert filtered.status_code == 200
    assert [r["item_id"] for r in filtered.json()["recommendations"]] == [
        r["item_id"] for r in recommender.recommend(history, k=3, category="Shampoo", exclude=["item0"])
    ]
    assert all(
        r["item_id"] != "item0" and ["Beauty", "Shampoo"] in r["categories"] for r in filtered.json()["recommendations"]
    )
    only = client.post("/recommend", json={"history": history, "only": ["item7", "item8"]}).json()["recommendations"]
    assert sorted(r["item_id"] for r in only) == ["item7", "item8"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"history": ["item1", "nope"]}, "unknown item id 'nope'"),
        ({"history": []}, "history: List should have at least 1 item"),
        ({"history": ["item1"] * 1001}, "history: List should have at most 1000 items"),
        ({"k": 5}, "history: Field required"),
        ({"history": "item1"}, "history: Input should be a valid list"),
        ({"history": [1, 2]}, "history.0: Input should be a valid string"),
        ({"history": ["item1"], "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"history": ["item1"], "k": 101}, "k: Input should be less than or equal to 100"),
        ({"history": ["item1"], "k": "5"}, "k: Input should be a valid integer"),
        ({"history": ["item1"], "k": 10**40}, "k: Input should be less than or equal to 100"),
        ({"history": ["item1"], "temperature": -1}, "temperature: Input should be greater than 0"),
        ({"history": ["item1"], "exclude_seen": "no"}, "exclude_seen: Input should be a valid boolean"),
        ({"history": ["item1"], "user_id": 7}, "user_id: Input should be a valid string"),
        ({"history": ["item1"], "histroy": []}, "histroy: Extra inputs are not permitted"),
        ({"history": ["item1"], "category": "Socks"}, "unknown category 'Socks'"),
        ({"history": ["item1"], "only": []}, "only: List should have at least 1 item"),
        ({"history": ["item1"], "exclude": ["nope"]}, "unknown item id 'nope'"),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)
def test_http_bad_input_is_a_4xx_naming_the_problem(client, body, message):
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    assert message in response.json()["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"history": ["item1"], "temperature": NaN}',
        b"\xff\xfe",
        b"[" * 50_000,
        b'{"history": ["item1"], "user_id": "\\ud800"}',
        b'{"history": ["\\ud800x"]}',
    ],
)
def test_http_malformed_bodies_are_4xx(client, raw):
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.json()["message"]
