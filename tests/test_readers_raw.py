"""Raw Amazon 2014 and custom-table readers, and the Amazon downloader (against 127.0.0.1 only)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tigerrec.data import DataError, load_dataset
from tigerrec.data.amazon import download_amazon, is_amazon_dir, read_amazon
from tigerrec.data.custom import is_custom_dir, read_custom

# ---------------------------------------------------------------- fixtures

# (user, item, time) in file order. u1's reviews are out of order with a tie
# (i2, i3 at time 20: file order kept) and a repeat of i1; u3 has only 2 items.
REVIEWS = [
    ("u1", "i3", 20),
    ("u1", "i1", 30),
    ("u2", "i4", 5),
    ("u1", "i2", 20),
    ("u1", "i0", 10),
    ("u2", "i2", 6),
    ("u3", "i5", 1),
    ("u2", "i1", 7),
    ("u1", "i1", 40),
    ("u3", "i0", 2),
]
META = [
    {
        "asin": "i0",
        "title": "Tom &amp; Jerry Soap",
        "price": 3.5,
        "brand": "Acme",
        "categories": [["Beauty", "Bath"]],
        "description": "",
        "imUrl": "http://x/y.jpg",
    },
    {"asin": "i1", "title": "Lip Balm", "categories": [["Beauty"]], "salesRank": {"Beauty": 3}},
    {"asin": "i2", "title": "O'Brien's Shampoo", "brand": ""},
    {"asin": "i3", "title": "Comb"},
    {"asin": "i4", "title": "Brush"},
    {"asin": "i9", "title": "Never reviewed"},
]


def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def write_amazon(directory, category="Beauty", reviews=REVIEWS, extra_meta_lines=()):
    directory.mkdir(parents=True, exist_ok=True)
    write_gz(
        directory / f"reviews_{category}_5.json.gz",
        [
            json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0, "reviewText": "ok"})
            for u, i, t in reviews
        ],
    )
    # The real meta files hold Python dict literals (repr), not JSON.
    write_gz(directory / f"meta_{category}.json.gz", [repr(m) for m in META] + list(extra_meta_lines))
    return directory


def sequence_of(dataset, user):
    return [dataset.item_ids[i] for i in dataset.sequences[dataset.user_ids.index(user)]]


# ---------------------------------------------------------------- Amazon reader


def test_amazon_order_ids_and_meta(tmp_path):
    path = write_amazon(tmp_path / "raw")
    assert is_amazon_dir(path) and not is_custom_dir(path)
    data = read_amazon(path)
    assert data.name == "Beauty"
    # Sorted by time, tie (i2/i3 at 20) in file order, repeated i1 kept once (earliest).
    assert sequence_of(data, "u1") == ["i0", "i3", "i2", "i1"]
    assert sequence_of(data, "u2") == ["i4", "i2", "i1"]
    assert data.user_ids == ["u1", "u2"]  # u3 has 2 items: dropped
    assert data.item_ids == ["i0", "i3", "i2", "i1", "i4"]  # order of first appearance
    meta = dict(zip(data.item_ids, data.item_meta))
    assert meta["i0"] == {
        "title": "Tom & Jerry Soap",
        "price": 3.5,
        "brand": "Acme",
        "categories": [["Beauty", "Bath"]],
    }
    assert meta["i1"] == {"title": "Lip Balm", "categories": [["Beauty"]]}
    assert meta["i2"] == {"title": "O'Brien's Shampoo"}  # empty brand dropped


def test_amazon_min_interactions_and_short_category_name(tmp_path):
    path = write_amazon(tmp_path / "raw")
    data = read_amazon(path, category="beauty", min_interactions=2)
    assert data.user_ids == ["u1", "u2", "u3"]


def test_amazon_malformed_review_names_line(tmp_path):
    path = write_amazon(tmp_path / "raw")
    lines = gzip.open(path / "reviews_Beauty_5.json.gz", "rt").read().splitlines()
    lines[2] = '{"reviewerID": "u2", "asin": "i4"}'  # no unixReviewTime
    write_gz(path / "reviews_Beauty_5.json.gz", lines)
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz:3: malformed review"):
        read_amazon(path)
    lines[2] = "{not json"
    write_gz(path / "reviews_Beauty_5.json.gz", lines)
    with pytest.raises(DataError, match=r":3: malformed review"):
        read_amazon(path)


def test_amazon_malformed_meta_lines_skipped_and_counted(tmp_path, caplog):
    path = write_amazon(
        tmp_path / "raw", extra_meta_lines=["{'asin': 'i5', 'title': ", "['not', 'a dict']", "__import__('os')"]
    )
    with caplog.at_level(logging.WARNING, logger="tigerrec"):
        data = read_amazon(path, min_interactions=2)
    assert "skipped 3 malformed metadata lines" in caplog.text
    assert "meta_Beauty.json.gz:7" in caplog.text  # the first bad line
    assert data.item_meta[data.item_ids.index("i5")] == {}


def test_amazon_needs_one_category(tmp_path):
    path = write_amazon(tmp_path / "raw")
    write_amazon(path, category="Toys_and_Games")
    with pytest.raises(DataError, match="exactly one category"):
        read_amazon(path)
    assert read_amazon(path, category="toys").name == "Toys_and_Games"


# ---------------------------------------------------------------- custom reader


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


INTERACTIONS_CSV = """user_id,item_id,timestamp,rating
alice,b,2021-01-02T00:00:00Z,5
alice,a,2021-01-01,4
bob,c,2021-03-01T10:00:00+02:00,3
alice,c,2021-01-02T00:00:00+00:00,1
bob,a,2021-03-01T09:00:00,2
bob,b,2021-03-02,2
carol,a,2021-01-01,1
"""

ITEMS_CSV = """item_id,title,price,categories,color,description
a,Tom &amp; Jerry Mug,12.50,Home > Kitchen | Gifts,red,
b,Plain Cup,about 10,Kitchen,,A cup.
c,Spoon,,,,
"""


def test_custom_csv(tmp_path, caplog):
    path = tmp_path / "shop"
    path.mkdir()
    write_text(path / "interactions.csv", INTERACTIONS_CSV)
    write_text(path / "items.csv", ITEMS_CSV)
    assert is_custom_dir(path) and not is_amazon_dir(path)
    with caplog.at_level(logging.WARNING, logger="tigerrec"):
        data = read_custom(path)
    assert "skipped 1 users" in caplog.text  # carol
    assert data.name == "shop"
    assert sequence_of(data, "alice") == ["a", "b", "c"]  # b and c tie: file order
    # bob: c is 08:00 UTC (09:00 +02:00 would be wrong), a is 09:00 UTC (no zone = UTC)
    assert sequence_of(data, "bob") == ["c", "a", "b"]
    assert data.item_ids == ["a", "b", "c"]
    meta = dict(zip(data.item_ids, data.item_meta))
    assert meta["a"] == {
        "title": "Tom & Jerry Mug",
        "price": 12.5,
        "categories": [["Home", "Kitchen"], ["Gifts"]],
        "color": "red",
    }
    assert meta["b"] == {
        "title": "Plain Cup",
        "price": "about 10",
        "categories": [["Kitchen"]],
        "description": "A cup.",
    }
    assert meta["c"] == {"title": "Spoon"}


def test_custom_numeric_timestamps_and_missing_items(tmp_path, caplog):
    write_text(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,x,3\nu,y,1.5\nu,z,2\nu,x,0\n")
    with caplog.at_level(logging.WARNING, logger="tigerrec"):
        data = read_custom(tmp_path)
    assert sequence_of(data, "u") == ["x", "y", "z"]  # repeated x kept once, at its earliest time
    assert "no metadata" in caplog.text and "dropped 1 repeated" in caplog.text


@pytest.mark.parametrize(
    "table, message",
    [
        ("user_id,item,timestamp\nu,x,1\n", r"interactions\.csv: missing column 'item_id'"),
        ("user_id,item_id,timestamp\nu,x,1\nu,y,yesterday\n", r"interactions\.csv:3: timestamp 'yesterday'"),
        ("user_id,item_id,timestamp\nu,x,1\nu,y,2021-01-01\n", "mix numbers"),
        ("user_id,item_id,timestamp\nu,,1\n", r"interactions\.csv:2: empty item_id"),
    ],
)
def test_custom_interaction_errors(tmp_path, table, message):
    write_text(tmp_path / "interactions.csv", table)
    with pytest.raises(DataError, match=message):
        read_custom(tmp_path)


def test_custom_items_errors(tmp_path):
    write_text(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,x,1\nu,y,2\nu,z,3\n")
    write_text(tmp_path / "items.csv", "item_id,title\nx,X\ny,Y\nx,X again\n")
    with pytest.raises(DataError, match=r"items\.csv:4: item x appears twice"):
        read_custom(tmp_path)
    write_text(tmp_path / "items.csv", "id,title\nx,X\n")
    with pytest.raises(DataError, match=r"items\.csv: missing column 'item_id'"):
        read_custom(tmp_path)


def test_custom_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import datetime as dt

    import pyarrow.parquet as pq

    utc = dt.UTC
    pq.write_table(
        pa.table(
            {
                "user_id": [7, 7, 7, 8],
                "item_id": [30, 10, 20, 10],
                "timestamp": [
                    dt.datetime(2020, 1, 3, tzinfo=utc),
                    dt.datetime(2020, 1, 1, tzinfo=utc),
                    dt.datetime(2020, 1, 2, tzinfo=utc),
                    dt.datetime(2020, 1, 1, tzinfo=utc),
                ],
            }
        ),
        tmp_path / "interactions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "item_id": [10, 20, 30],
                "title": ["Ten", None, "Thirty"],
                "price": [1.0, 2.0, None],
                "categories": [[["A", "B"]], [], [["C"]]],
            }
        ),
        tmp_path / "items.parquet",
    )
    data = read_custom(tmp_path)
    assert data.user_ids == ["7"]
    assert sequence_of(data, "7") == ["10", "20", "30"]
    meta = dict(zip(data.item_ids, data.item_meta))
    assert meta["10"] == {"title": "Ten", "price": 1.0, "categories": [["A", "B"]]}
    assert meta["20"] == {"price": 2.0}
    assert meta["30"] == {"title": "Thirty", "categories": [["C"]]}


def test_custom_both_formats_is_an_error(tmp_path):
    write_text(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n")
    write_text(tmp_path / "interactions.parquet", "")
    with pytest.raises(DataError, match="keep one"):
        read_custom(tmp_path)


# ---------------------------------------------------------------- dispatch


def test_load_dataset_dispatch(tmp_path):
    amazon_dir = write_amazon(tmp_path / "amazon")
    assert load_dataset(amazon_dir).name == "Beauty"
    custom_dir = tmp_path / "custom"
    custom_dir.mkdir()
    write_text(custom_dir / "interactions.csv", INTERACTIONS_CSV)
    assert load_dataset(custom_dir).name == "custom"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset format"):
        load_dataset(tmp_path / "empty")


# ---------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for the fixture files; yields (base_url, served dir, list of requested paths)."""
    served = write_amazon(tmp_path / "served")
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_unreachable(tmp_path):
    with pytest.raises(DataError, match="--data-dir") as info:
        download_amazon("beauty", tmp_path / "cache", base_url="http://127.0.0.1:9/", timeout=5)
    assert "failed" in str(info.value) and "reviews_Beauty_5.json.gz" in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.gz*"))  # nothing half-written left behind


def test_download_caches_and_repairs(tmp_path, server):
    base_url, served, requests = server
    cache = tmp_path / "cache"
    path = download_amazon("beauty", cache, base_url=base_url, timeout=10)
    assert path == cache / "Beauty"
    assert sorted(requests) == ["/meta_Beauty.json.gz", "/reviews_Beauty_5.json.gz"]
    assert (path / "reviews_Beauty_5.json.gz").read_bytes() == (served / "reviews_Beauty_5.json.gz").read_bytes()
    assert load_dataset(path).user_ids == ["u1", "u2"]

    download_amazon("Beauty", cache, base_url=base_url, timeout=10)
    assert len(requests) == 2  # cached and valid: nothing fetched

    (path / "meta_Beauty.json.gz").write_bytes(b"\x1f\x8b truncated")
    download_amazon("beauty", cache, base_url=base_url, timeout=10)
    assert requests[2:] == ["/meta_Beauty.json.gz"]  # only the corrupt file again
    assert (path / "meta_Beauty.json.gz").read_bytes() == (served / "meta_Beauty.json.gz").read_bytes()


def test_download_checks_sha256(tmp_path, server):
    base_url, served, _ = server
    good = {
        name: hashlib.sha256((served / name).read_bytes()).hexdigest()
        for name in ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz")
    }
    download_amazon("beauty", tmp_path / "ok", base_url=base_url, sha256=good, timeout=10)
    bad = {**good, "meta_Beauty.json.gz": "0" * 64}
    with pytest.raises(DataError, match="corrupt.*sha256"):
        download_amazon("beauty", tmp_path / "bad", base_url=base_url, sha256=bad, timeout=10)
    assert not (tmp_path / "bad" / "Beauty" / "meta_Beauty.json.gz").exists()


def test_download_missing_file_on_server(tmp_path, server):
    base_url, _, _ = server
    with pytest.raises(DataError, match="reviews_Toys_and_Games_5.json.gz.*failed.*--data-dir"):
        download_amazon("toys", tmp_path / "cache", base_url=base_url, timeout=10)
