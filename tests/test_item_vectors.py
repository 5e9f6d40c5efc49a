"""Bring your own item vectors: a file keyed by item id replaces the text encoder, and bad files are refused."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config

from tigerrec.data import DataError, make_tiny
from tigerrec.pipeline import embed_items, run
from tigerrec.text import read_item_vectors

ITEMS = ["a", "b", "c"]


def save_npz(path, ids, vectors):
    np.savez(path, item_ids=np.array(ids), embeddings=np.asarray(vectors))
    return path


def test_vectors_come_back_in_the_datasets_item_order(tmp_path):
    path = save_npz(tmp_path / "v.npz", ["c", "a", "b"], [[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]])
    vectors, label = read_item_vectors(path, ITEMS)
    assert vectors.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]] and vectors.dtype == np.float32
    assert label.startswith("vectors:v.npz:")
    table = pa.table({"item_id": ["b", "c", "a"], "embedding": [[2.0, 0.0], [3.0, 0.0], [1.0, 0.0]]})
    pq.write_table(table, tmp_path / "v.parquet")
    assert read_item_vectors(tmp_path / "v.parquet", ITEMS)[0][:, 0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "ids, vectors, message",
    [
        (["a", "b"], [[1.0], [2.0]], "1 of 3 items have no vector (e.g. c)"),
        (["a", "b", "c", "z"], [[1.0], [2.0], [3.0], [4.0]], "1 vectors are for items not in the dataset (e.g. z)"),
        (["a", "b", "c"], [[1.0], [np.nan], [3.0]], "1 vectors hold NaN or infinite values (e.g. item b)"),
        (["a", "b", "c"], [[1], [2], [3]], "vectors must be floating point, got int64"),
        (["a", "b", "c"], [1.0, 2.0, 3.0], "expected one vector per item id, got 3 ids and an array of shape (3,)"),
        (["a", "a", "c"], [[1.0], [2.0], [3.0]], "item a has two vectors"),
    ],
)
def test_bad_vector_files_get_one_line_errors(tmp_path, ids, vectors, message):
    path = save_npz(tmp_path / "v.npz", ids, vectors)
    with pytest.raises(DataError) as refused:
        read_item_vectors(path, ITEMS)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_wrong_formats_are_named(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match=r"must be a \.npz \(item_ids, embeddings\) or \.parquet"):
        read_item_vectors(tmp_path / "v.npy", ITEMS)
    np.savez(tmp_path / "w.npz", vectors=np.ones((3, 2)))
    with pytest.raises(DataError, match="expected arrays item_ids and embeddings, found vectors"):
        read_item_vectors(tmp_path / "w.npz", ITEMS)
    with pytest.raises(DataError, match="no item vectors file"):
        read_item_vectors(tmp_path / "missing.npz", ITEMS)


def test_a_run_on_precomputed_vectors_skips_the_encoder(tmp_path, monkeypatch):
    dataset = make_tiny()
    rng = np.random.default_rng(0)
    path = save_npz(tmp_path / "v.npz", dataset.item_ids, rng.normal(size=(dataset.num_items, 16)))
    cfg = tiny_config(text={"embeddings_file": str(path)}, train={"steps": 20, "eval_every": 20})

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder ran")

    monkeypatch.setattr("tigerrec.pipeline.TextEncoder", no_encoder)
    vectors, label, _ = embed_items(dataset, cfg)
    assert vectors.shape == (dataset.num_items, 16) and label.startswith("vectors:")
    metrics = run("tiny", cfg, tmp_path / "run")
    assert 0 <= metrics["test"]["recall@10"] <= 1
    # New items join such a run from their vectors; the text encoder still never runs.
    from tigerrec.catalogue import add_items
    from tigerrec.errors import TigerrecError
    from tigerrec.recommend import Recommender

    run_dir = tmp_path / "run"
    new = save_npz(tmp_path / "new.npz", ["n1", "n2"], rng.normal(size=(2, 16)))
    with pytest.raises(TigerrecError, match="give the new items' vectors too"):
        add_items(run_dir, {"n1": {}, "n2": {}})
    with pytest.raises(DataError, match="have no vector"):
        add_items(run_dir, {"n1": {}, "n3": {}}, new)
    summary = add_items(run_dir, {"n1": {}, "n2": {}}, new)
    assert summary["added"] == 2 and summary["items"] == dataset.num_items + 2
    recommender = Recommender.load(run_dir)
    assert recommender.num_items == dataset.num_items + 2
    assert len(recommender.recommend([dataset.item_ids[0], "n1"], k=5)) == 5
