import numpy as np

from tigerrec.config import TextConfig
from tigerrec.text import TextEncoder, item_sentence, resolve_encoder

TEMPLATE = TextConfig().template


def test_sentence_skips_missing_fields_and_unescapes_html():
    meta = {"title": "Tom &amp; Jerry&#39;s Soap", "brand": "Acme", "categories": [["Beauty", "Bath"], ["Beauty", "Soap"]]}
    assert item_sentence(meta, TEMPLATE) == "Tom & Jerry's Soap. Brand: Acme. Categories: Beauty, Bath, Soap."
    assert item_sentence({"title": "X", "price": 3.5}, TEMPLATE) == "X. Price: $3.50."
    assert item_sentence({}, TEMPLATE) == ""
    assert item_sentence({"brand": "B", "title": "T"}, "{brand} - {title}") == "B - T"


def test_encoder_embeds_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGERREC_CACHE", str(tmp_path))
    encoder = TextEncoder("all-MiniLM-L6-v2", batch_size=4)
    texts = ["red lipstick", "blue shampoo", "red lipstick matte", "a hair dryer"]
    first = encoder.encode(texts)
    assert first.shape == (4, 384) and first.dtype == np.float32
    cached = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(cached) == 1
    # Order must be preserved despite length-sorted batching: row i embeds texts[i].
    single = encoder.encode([texts[2]], use_cache=False)[0]
    assert np.dot(first[2], single) / (np.linalg.norm(first[2]) * np.linalg.norm(single)) > 0.99
    again = TextEncoder("all-MiniLM-L6-v2").encode(texts)  # from the cache, no model load
    assert np.array_equal(first, again)


def test_local_folders_and_hub_names_pass_through(tmp_path):
    assert resolve_encoder(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder("sentence-transformers/sentence-t5-base") == "sentence-transformers/sentence-t5-base"
