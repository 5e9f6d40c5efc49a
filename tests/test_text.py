import gzip

import numpy as np
import pytest

from tigerrec.config import TextConfig
from tigerrec.data import DataError
from tigerrec.text import EmbeddingCache, TextEncoder, item_sentence, read_titles, resolve_encoder, with_titles

TEMPLATE = TextConfig().template


def test_sentence_skips_missing_fields_and_keeps_the_text_as_read():
    meta = {
        "title": "Tom & Jerry's Soap",  # readers have unescaped HTML entities already (data.unescape_meta)
        "brand": "Acme",
        "categories": [["Beauty", "Bath"], ["Beauty", "Soap"]],
    }
    assert item_sentence(meta, TEMPLATE) == "Tom & Jerry's Soap. Brand: Acme. Categories: Beauty, Bath, Soap."
    assert item_sentence({"title": "X", "price": 3.5}, TEMPLATE) == "X. Price: $3.50."
    assert item_sentence({}, TEMPLATE) == ""
    assert item_sentence({"brand": "B", "title": "T"}, "{brand} - {title}") == "B - T"


def test_titles_file_fills_only_missing_titles_by_item_id_or_asin(tmp_path):
    path = tmp_path / "titles.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("B00X jump rope olympic style\n\n2 camping mattress\nB00Y not used: item has a title\n")
    titles = read_titles(path)
    assert titles == {"B00X": "jump rope olympic style", "2": "camping mattress", "B00Y": "not used: item has a title"}
    meta = [{"asin": "B00X", "brand": "Acme"}, {"brand": "Intex"}, {"asin": "B00Y", "title": "Sock"}, {}]
    filled = with_titles(["1", "2", "3", "4"], meta, titles)
    assert [m.get("title") for m in filled] == ["jump rope olympic style", "camping mattress", "Sock", None]
    assert meta[0] == {"asin": "B00X", "brand": "Acme"}  # the dataset's own metadata is left alone
    assert item_sentence(filled[0], TEMPLATE) == "jump rope olympic style. Brand: Acme."


def test_titles_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_titles(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("B00X a title\nB00Z\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'KEY TEXT'"):
        read_titles(bad)
    with pytest.raises(DataError, match="no key of the titles file matches"):
        with_titles(["1"], [{"asin": "A1"}], {"B00X": "x"})


def test_encoder_embeds_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGERREC_CACHE", str(tmp_path))
    encoder = TextEncoder("all-MiniLM-L6-v2", batch_size=4)
    texts = ["red lipstick", "blue shampoo", "red lipstick matte", "a hair dryer"]
    first = encoder.encode(texts)
    assert first.shape == (4, 384) and first.dtype == np.float32
    cached = list((tmp_path / "embeddings").glob("*.npz"))
    assert len(cached) == 1
    # Order must be preserved despite length-sorted batching: row i embeds texts[i].
    single = encoder.encode([texts[2]], use_cache=False)[0]
    assert np.dot(first[2], single) / (np.linalg.norm(first[2]) * np.linalg.norm(single)) > 0.99
    again = TextEncoder("all-MiniLM-L6-v2").encode(texts)  # from the cache, no model load
    assert np.array_equal(first, again)


def test_cache_embeds_only_new_texts(tmp_path, monkeypatch):
    """A subset or a grown list reuses every cached row; only unseen texts meet the encoder."""
    monkeypatch.setenv("TIGERREC_CACHE", str(tmp_path))
    embedded = []

    def fake_embed(self, texts):
        embedded.append(list(texts))
        return np.stack([np.full(3, float(len(t)), dtype=np.float32) for t in texts])

    monkeypatch.setattr(TextEncoder, "_embed", fake_embed)
    encoder = TextEncoder("all-MiniLM-L6-v2")
    full = encoder.encode(["aa", "bbb", "c"])
    subset = encoder.encode(["c", "aa"])
    grown = encoder.encode(["bbb", "dddd", "aa"])
    assert embedded == [["aa", "bbb", "c"], ["dddd"]]
    assert np.array_equal(subset, full[[2, 0]])
    assert np.array_equal(grown, np.stack([full[1], np.full(3, 4.0), full[0]]))
    encoder.encode(["bbb", "dddd", "aa"])  # the whole list is cached now
    assert len(embedded) == 2


def test_cache_reads_whole_list_files_of_earlier_releases(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGERREC_CACHE", str(tmp_path))
    monkeypatch.setattr(TextEncoder, "_embed", lambda self, texts: pytest.fail(f"re-embedded {texts}"))
    encoder = TextEncoder("all-MiniLM-L6-v2")
    texts, vectors = ["red lipstick", "blue shampoo"], np.eye(2, 4, dtype=np.float32)
    legacy = EmbeddingCache(tmp_path / "embeddings", encoder.label)._path(texts).with_suffix(".npy")
    legacy.parent.mkdir(parents=True)
    np.save(legacy, vectors)
    assert np.array_equal(encoder.encode(texts), vectors)
    assert np.array_equal(encoder.encode(["blue shampoo"]), vectors[1:])  # its texts now serve subsets too


def test_local_folders_and_hub_names_pass_through(tmp_path):
    assert resolve_encoder(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder("sentence-transformers/sentence-t5-base") == "sentence-transformers/sentence-t5-base"
