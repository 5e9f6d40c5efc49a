import gzip
import json

import numpy as np
import pytest
from conftest import SHARED_DATA

from tigerrec.data import DataError, leave_one_out, load_dataset, make_tiny
from tigerrec.data.p5 import read_p5, write_p5
from tigerrec.data.synthetic import DIM, make_scale, oracle_recall_at_10


def write_dir(path, sequences: str, meta: list[dict] | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "sequential_data.txt").write_text(sequences)
    if meta is not None:
        with gzip.open(path / "item_meta.jsonl.gz", "wt") as f:
            for row in meta:
                f.write(json.dumps(row) + "\n")
    return path


def test_p5_reader_numbers_items_in_order_of_appearance(tmp_path):
    meta = [{"item_id": i, "title": f"t{i}", "brand": None} for i in (7, 8, 9, 5)]
    ds = read_p5(write_dir(tmp_path / "d", "1 7 8 9\n2 9 5 7 8\n", meta))
    assert ds.user_ids == ["1", "2"] and ds.item_ids == ["7", "8", "9", "5"]
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [2, 3, 0, 1]]
    assert ds.item_meta[3] == {"title": "t5"}  # None fields dropped
    assert ds.item_index("9") == 2
    with pytest.raises(KeyError, match="unknown item id '42'"):
        ds.item_index("42")


def test_p5_reader_skips_short_users_and_counts_them(tmp_path, caplog):
    ds = read_p5(write_dir(tmp_path / "d", "1 1 2 3\n2 1 2\n3 4 5 6\n"))
    assert ds.user_ids == ["1", "3"]
    assert "skipped 1 users with fewer than 3 interactions" in caplog.text


def test_p5_reader_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"sequential_data.txt:2: expected"):
        read_p5(write_dir(tmp_path / "a", "1 1 2 3\n2\n"))
    with pytest.raises(DataError, match=r"user 1 appears twice"):
        read_p5(write_dir(tmp_path / "b", "1 1 2 3\n1 4 5 6\n"))
    d = write_dir(tmp_path / "c", "1 1 2 3\n")
    with gzip.open(d / "item_meta.jsonl.gz", "wt") as f:
        f.write('{"item_id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"item_meta.jsonl.gz:2: malformed"):
        read_p5(d)
    with pytest.raises(DataError, match="no known dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_items_without_metadata_are_counted(tmp_path, caplog):
    ds = read_p5(write_dir(tmp_path / "d", "1 1 2 3\n", [{"item_id": 1, "title": "a"}]))
    assert ds.item_meta[1] == {}
    assert "2 items have no metadata" in caplog.text


def test_leave_one_out():
    ds = make_tiny()
    split = leave_one_out(ds)
    for u, seq in enumerate(ds.sequences):
        assert split.test_target[u] == seq[-1] and split.valid_target[u] == seq[-2]
        assert split.train[u].tolist() == seq[:-2].tolist()
        assert split.test_history[u].tolist() == seq[:-1].tolist()


def test_backtest_moves_the_split_one_step_back_in_time(caplog):
    caplog.set_level("INFO")
    ds = make_tiny()
    now, back = leave_one_out(ds), leave_one_out(ds, backtest=1)
    # The backtest's test is the real validation; the real test item is read nowhere.
    assert back.test_target.tolist() == now.valid_target.tolist()
    assert [h.tolist() for h in back.test_history] == [h.tolist() for h in now.valid_history]
    assert [t.tolist() for t in back.train] == [t[:-1].tolist() for t in now.train]
    assert back.valid_target.tolist() == [t[-1] for t in now.train]
    assert all(
        now.test_target[u] not in np.concatenate([back.train[u], back.test_history[u]])
        for u in range(ds.num_users)
        if now.test_target[u] not in ds.sequences[u][:-1]
    )
    assert "last 1 items are left out" in caplog.text
    short = make_tiny()
    short.sequences[0] = short.sequences[0][:3]
    leave_one_out(short)  # 3 items are enough without a backtest
    with pytest.raises(
        DataError, match=r"1 users have fewer than 4 items .*data.backtest=1; set data.min_interactions=4"
    ):
        leave_one_out(short, backtest=1)


def test_p5_roundtrip(tmp_path):
    ds = make_tiny()
    write_p5(ds, tmp_path / "tiny")
    again = load_dataset(tmp_path / "tiny")
    assert again.user_ids == ds.user_ids and set(again.item_ids) <= set(ds.item_ids)
    for a, b in zip(again.sequences, ds.sequences):
        assert [again.item_ids[i] for i in a] == [ds.item_ids[i] for i in b]
    item = ds.item_ids[5]
    assert again.item_meta[again.item_index(item)]["title"] == ds.item_meta[5]["title"]


@pytest.mark.skipif(not (SHARED_DATA / "beauty").is_dir(), reason="benchmark data not present")
def test_beauty_matches_published_statistics():
    ds = load_dataset(SHARED_DATA / "beauty")
    assert ds.stats() == {
        "users": 22363,
        "items": 12101,
        "interactions": 198502,
        "min_len": 5,
        "mean_len": 8.88,
        "max_len": 204,
    }
    assert np.mean([bool(m.get("title")) for m in ds.item_meta]) == 1.0


def test_html_entities_are_unescaped_once_when_metadata_are_read():
    from tigerrec.data.dataset import from_sequences
    from tigerrec.text import item_sentence

    meta = {
        "a": {"title": "Tom &amp; Jerry&#39;s Balm", "categories": [["Beauty", "Skin &amp; Care"]]},
        "b": {"title": "Literal &amp;amp; stays one level"},
    }
    dataset = from_sequences("shop", {"u": ["a", "b", "a"]}, meta)
    first, second = dataset.item_meta
    assert first == {"title": "Tom & Jerry's Balm", "categories": [["Beauty", "Skin & Care"]]}
    assert second["title"] == "Literal &amp; stays one level"  # unescaped once, not until nothing is left
    assert (
        item_sentence(first, "{title}. Categories: {categories}.")
        == "Tom & Jerry's Balm. Categories: Beauty, Skin & Care."
    )


@pytest.fixture(scope="module")
def scale():
    return make_scale(5000)  # 100 topics in 5 categories: at 2,000 the few topics make MostPop too strong


def test_make_scale_is_deterministic_in_size_and_seed(scale):
    again, other = make_scale(5000), make_scale(5000, seed=1)
    assert np.array_equal(again.item_vectors, scale.item_vectors)
    assert all(np.array_equal(a, b) for a, b in zip(again.dataset.sequences, scale.dataset.sequences))
    assert again.dataset.user_ids == scale.dataset.user_ids
    assert not np.array_equal(other.item_vectors, scale.item_vectors)
    with pytest.raises(ValueError, match="multiple of 1000"):
        make_scale(2500)


def test_make_scale_shapes_like_beauty(scale):
    ds, vectors = scale.dataset, scale.item_vectors
    assert ds.item_ids[:2] == ["i0", "i1"] and ds.user_ids[:2] == ["u0", "u1"] and ds.num_items == 5000
    assert vectors.shape == (5000, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    stats = ds.stats()
    assert stats["min_len"] >= 5 and 8 < stats["mean_len"] < 10 and stats["max_len"] <= 200
    assert 14 < stats["interactions"] / ds.num_items < 18
    assert all(len(np.unique(s)) == len(s) for s in ds.sequences)  # no item twice in a sequence
    items = np.concatenate(ds.sequences)
    assert items.min() >= 0 and items.max() < ds.num_items
    # Items of a topic are nearer each other than to other topics' items (what Semantic IDs find).
    same = scale.item_topic[:, None] == scale.item_topic[None, :200]
    similarity = vectors @ vectors[:200].T
    assert similarity[same].mean() > similarity[~same].mean() + 0.3


def test_make_scale_leaves_markov_above_mostpop_and_room_above_markov(scale):
    from tigerrec.baselines import markov, most_popular
    from tigerrec.evaluate import ranking_metrics

    split, n = leave_one_out(scale.dataset), scale.dataset.num_items
    recall = {
        rank.__name__: ranking_metrics(
            rank(split.train, n, split.test_history, k=10, exclude_history=True), split.test_target
        )["recall@10"]
        for rank in (most_popular, markov)
    }
    assert recall["markov"] > 2.5 * recall["most_popular"]  # 3.5-4.4x at 5,000 items, 5-5.3x at 10k (Beauty: 5.8x)
    assert oracle_recall_at_10(scale, users=None) > 1.8 * recall["markov"]  # ~2.4x
