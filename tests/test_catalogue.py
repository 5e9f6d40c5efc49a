"""A catalogue that grows without retraining: tigerrec add-items, Recommender.add_items, reload."""

import csv
import json
import shutil

import numpy as np
import pytest

from tigerrec import catalogue
from tigerrec.cli import main
from tigerrec.decoding import ItemFilter
from tigerrec.errors import TigerrecError
from tigerrec.new_items import VECTORS_FILE, guided_rank
from tigerrec.recommend import Recommender, RequestError
from tigerrec.semantic_ids import SemanticIDs


def write_items(path, rows, columns=("item_id", "title", "brand", "categories")):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def new_rows(n, start=0):
    kinds = ["shampoo", "lipstick", "nail polish", "perfume", "sunscreen"]
    return [
        {
            "item_id": f"new{start + i}",
            "title": f"green {kinds[i % 5]} no. {start + i}",
            "brand": "Fresh",
            "categories": f"Beauty > {kinds[i % 5].title()}",
        }
        for i in range(n)
    ]


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A private copy of the shared tiny TIGER run (the tiny_run fixture): these tests change it."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def snapshot(run_dir):
    return {
        path.relative_to(run_dir): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != ".tigerrec.lock"  # every writer takes the lock, refused or not
    }


def test_add_items_keeps_every_existing_id_and_old_recommendations(run_copy, tmp_path):
    before = Recommender.load(run_copy, device="cpu")
    old_ids = before.ids.codes.copy()
    histories = [before.item_ids[i : i + 3] for i in range(0, 60, 6)]
    expected = [before.recommend(h, k=10) for h in histories]

    summary = catalogue.add_items(run_copy, write_items(tmp_path / "new.csv", new_rows(12)))
    assert summary["added"] == 12 and summary["items"] == before.num_items + 12
    assert summary["trained_items"] == before.num_items
    ids = SemanticIDs.load(run_copy / "ids", before.ids.codebook_size)
    assert ids.item_ids[: before.num_items] == before.item_ids and (ids.codes[: before.num_items] == old_ids).all()
    assert ids.item_ids[before.num_items :] == [f"new{i}" for i in range(12)]

    after = Recommender.load(run_copy, device="cpu")
    assert after.num_items == before.num_items + 12 and after.trained_items == before.num_items
    assert after.item("new3")["title"] == "green perfume no. 3"
    # No new item in the results: exactly the items the trained catalogue gave, in its order. Scores agree to
    # a little more than float precision: an ID's last code is scored among the items that share its prefix,
    # new ones included now, to which the model gives next to no probability.
    got = [after.recommend(h, k=10, max_new_share=0) for h in histories]
    assert [[{**r, "score": None} for r in recs] for recs in got] == [
        [{**r, "score": None} for r in recs] for recs in expected
    ]
    assert [r["score"] for recs in got for r in recs] == pytest.approx(
        [r["score"] for recs in expected for r in recs], abs=1e-3
    )
    # New items are reachable and capped.
    only_new = after.recommend(histories[0], k=5, only=[f"new{i}" for i in range(12)])
    assert len(only_new) == 5 and all(r["item_id"].startswith("new") for r in only_new)
    for h in histories:
        capped = after.recommend(h, k=10, max_new_share=0.2)
        assert len(capped) == 10 and sum(r["item_id"].startswith("new") for r in capped) <= 2
        assert [r["score"] for r in capped] == sorted((r["score"] for r in capped), reverse=True)
    record = catalogue.trained_items(run_copy)
    assert record == before.num_items
    # Reserved slots: exactly ceil(0.2 * 10) = 2 new items in every list, those the guided rule ranks first
    # from the run's item vectors, the history and the model's best trained-with items.
    assert after.item_vectors is not None and len(after.item_vectors) == after.num_items
    index = {item: i for i, item in enumerate(after.item_ids)}
    for h in histories:
        reserved = after.recommend(h, k=10, max_new_share=0.2, reserve_new=True)
        new = [r["item_id"] for r in reserved if r["new"]]
        assert len(reserved) == 10 and len(new) == 2 and all(item.startswith("new") for item in new)
        assert [r["score"] for r in reserved] == sorted((r["score"] for r in reserved), reverse=True)
        guides = after.recommend(h, k=10, max_new_share=0)[: after.cfg.eval.new_item_guides]
        past = np.array([index[item] for item in h])
        want, _ = guided_rank(
            after.item_vectors,
            [past],
            np.array([[index[r["item_id"]] for r in guides]]),
            np.array([[r["score"] for r in guides]]),
            np.arange(after.trained_items, after.num_items),
            ItemFilter([past]),
            after.cfg.eval.new_item_pull,
            2,
            after.max_history,
        )
        assert new == [after.item_ids[i] for i in want[0]]
    # A run made before item vectors were stored ranks new items in reserved slots by the model's scores.
    (run_copy / "ids" / VECTORS_FILE).unlink()
    older = Recommender.load(run_copy, device="cpu")
    best_new = [r["item_id"] for r in older.recommend(histories[0], k=2, only=[f"new{i}" for i in range(12)])]
    reserved = older.recommend(histories[0], k=10, max_new_share=0.2, reserve_new=True)
    assert older.item_vectors is None and {r["item_id"] for r in reserved if r["new"]} == set(best_new)


def test_recommender_add_items_serves_them_at_once(run_copy):
    recommender = Recommender.load(run_copy, device="cpu")
    twin = recommender.item("item0")
    summary = recommender.add_items(
        {"newA": {key: value for key, value in twin.items() if key not in ("item_id", "semantic_id")}}
    )
    assert summary["items"] == recommender.num_items and "newA" in recommender
    # The same text, the same quantiser codes: the next collision code of item0's prefix.
    assert recommender.item("newA")["semantic_id"][:-1] == twin["semantic_id"][:-1]
    assert recommender.item("newA")["semantic_id"][-1] > twin["semantic_id"][-1]
    result = recommender.recommend(["item1"], k=3, only=["newA", "item2"])
    assert {r["item_id"] for r in result} == {"newA", "item2"}
    assert recommender.recommend(["item1"], k=3, only=["newA", "item2"], max_new_share=0)[0]["item_id"] == "item2"


def test_failed_or_bad_additions_change_nothing(run_copy, tmp_path, monkeypatch):
    untouched = snapshot(run_copy)
    cases = [
        (write_items(tmp_path / "dup.csv", new_rows(2) + new_rows(1)), "appears twice"),
        (
            write_items(tmp_path / "old.csv", [{"item_id": "item3", "title": "x", "brand": "", "categories": ""}]),
            "already in the catalogue",
        ),
        (
            write_items(tmp_path / "empty.csv", [{"item_id": "blank", "title": "", "brand": "", "categories": ""}]),
            "no text to embed",
        ),
        (
            write_items(
                tmp_path / "interactions.csv",
                [{"user_id": "u1", "item_id": "x9", "timestamp": "1"}],
                ("user_id", "item_id", "timestamp"),
            ),
            "no text to embed",
        ),
        (
            write_items(tmp_path / "other.csv", [{"sku": "a1", "title": "x"}], ("sku", "title")),
            "missing column 'item_id'",
        ),
        (tmp_path / "missing.csv", "no items table"),
        (write_items(tmp_path / "header.csv", []), "holds no items"),
        # 40 items with one text share one quantiser code tuple: more than the 16 collision codes.
        (
            write_items(
                tmp_path / "same.csv",
                [{"item_id": f"s{i}", "title": "the very same", "brand": "", "categories": ""} for i in range(40)],
            ),
            "share the codes",
        ),
    ]
    for path, message in cases:
        with pytest.raises(TigerrecError, match=message):
            catalogue.add_items(run_copy, path)
        assert snapshot(run_copy) == untouched, message

    # A failure after the first files were replaced puts them back.
    def broken_save(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(SemanticIDs, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        catalogue.add_items(run_copy, write_items(tmp_path / "ok.csv", new_rows(3)))
    assert snapshot(run_copy) == untouched


def test_cli_add_items_and_recommend_with_a_cap(run_copy, tmp_path, capsys):
    path = write_items(tmp_path / "new.csv", new_rows(4))
    assert main(["add-items", str(run_copy), str(path)]) == 0
    assert "added 4 items" in capsys.readouterr().out
    assert main(["add-items", str(run_copy), str(path)]) == 2  # the same items again
    assert "already in the catalogue" in capsys.readouterr().err
    more = write_items(tmp_path / "more.csv", new_rows(2, start=10))
    assert main(["add-items", str(run_copy), str(more), "--vectors", str(tmp_path / "v.npz")]) == 2
    assert "fitted on text embeddings, not on vectors: drop --vectors" in capsys.readouterr().err
    assert (
        main(
            [
                "recommend",
                str(run_copy),
                "--history",
                "item1,item2",
                "--only",
                "new0,new1,item5",
                "--max-new-share",
                "0.1",
                "-k",
                "3",
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    results = [r["item_id"] for r in json.loads(capsys.readouterr().out)]
    assert "item5" in results and len(results) == 2  # ceil(0.1 * 3) = 1 new item at most


def test_bad_cap_is_a_request_error(tiny_run):
    recommender = Recommender.load(tiny_run, device="cpu")
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(RequestError, match="max_new_share must be a number in"):
            recommender.recommend(["item1"], max_new_share=bad)
    with pytest.raises(RequestError, match="reserve_new needs max_new_share"):
        recommender.recommend(["item1"], reserve_new=True)
    with pytest.raises(RequestError, match="reserve_new must be true or false"):
        recommender.recommend(["item1"], max_new_share=0.1, reserve_new="yes")


def test_a_served_run_sees_added_items_after_reload(run_copy, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tigerrec.serve import create_app

    app = create_app(str(run_copy), admin=True, api_key="s3cret")
    local = TestClient(app, headers={"Authorization": "Bearer s3cret"}, raise_server_exceptions=False)
    remote = TestClient(app, raise_server_exceptions=False)
    items = local.get("/health").json()["items"]
    catalogue.add_items(run_copy, write_items(tmp_path / "new.csv", new_rows(5)))
    assert local.get("/items/new2").status_code == 404  # not yet
    assert remote.post("/admin/reload").status_code == 401  # the admin endpoints always need the key
    reloaded = local.post("/admin/reload")
    assert reloaded.status_code == 200 and reloaded.json() == {"status": "reloaded", "items": items + 5, "new_items": 5}
    assert local.get("/items/new2").json()["title"] == "green nail polish no. 2"
    assert local.get("/health").json()["new_items"] == 5
    body = {"history": ["item1"], "k": 4, "only": ["new0", "new1", "item9"], "max_new_share": 0.25}
    results = local.post("/recommend", json=body).json()["recommendations"]
    assert sum(r["item_id"].startswith("new") for r in results) == 1 and len(results) == 2
    reserved = local.post("/recommend", json={"history": ["item1"], "k": 4, "max_new_share": 0.5, "reserve_new": True})
    assert sum(r["item_id"].startswith("new") for r in reserved.json()["recommendations"]) == 2, reserved.json()
    # Without --admin there is no such endpoint; a reload that fails keeps the old run serving.
    assert TestClient(create_app(str(run_copy))).post("/admin/reload").status_code in (404, 405)
    (run_copy / "model.safetensors").write_bytes(b"garbage")
    failed = local.post("/admin/reload")
    assert failed.status_code == 500 and "still serving the previous run" in failed.json()["message"]
    assert local.post("/recommend", json={"history": ["item1"], "k": 3}).status_code == 200
