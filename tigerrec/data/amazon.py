"""Reader and downloader for the raw Amazon Product Reviews 2014 data (McAuley et al.).

A directory holds, for one category (e.g. ``Beauty``):

- ``reviews_<Category>_5.json.gz``: the 5-core reviews, one JSON object per line
  with ``reviewerID``, ``asin`` and ``unixReviewTime`` (other keys are ignored);
- ``meta_<Category>.json.gz``: item metadata, one *Python dict literal* per line
  (single quotes, so not JSON) with ``asin`` and any of ``title``, ``price``,
  ``brand``, ``categories`` (a list of category paths) and ``description``.

``read_amazon`` applies the P5 preprocessing: each user's reviews sorted by time
(ties keep file order), a repeated (user, item) pair kept once (its earliest
review), users with fewer than ``min_interactions`` items dropped. Strings are
kept raw (HTML entities included); the text template unescapes them.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import http.client
import json
import logging
import re
import urllib.request
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_path
from .dataset import META_FIELDS, DataError, Dataset, from_sequences

log = logging.getLogger(__name__)

# Files linked from http://jmcauley.ucsd.edu/data/amazon/index_2014.html
BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
INFO_URL = "http://jmcauley.ucsd.edu/data/amazon/index_2014.html"

# Short names for the three categories of the TIGER / P5 benchmarks.
SHORT_NAMES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}

# sha256 of the published files, checked after a download when known. None means
# unknown: the file is then only checked to be a complete gzip stream.
KNOWN_SHA256: dict[str, str | None] = {
    "reviews_Beauty_5.json.gz": None,
    "meta_Beauty.json.gz": None,
    "reviews_Sports_and_Outdoors_5.json.gz": None,
    "meta_Sports_and_Outdoors.json.gz": None,
    "reviews_Toys_and_Games_5.json.gz": None,
    "meta_Toys_and_Games.json.gz": None,
}

_REVIEWS_RE = re.compile(r"^reviews_(\w+)_5\.json\.gz$")
_CHUNK = 1 << 20


def category_name(category: str) -> str:
    """``beauty`` -> ``Beauty``; other names are used as given (file names are case-sensitive)."""
    name = SHORT_NAMES.get(category.lower(), category)
    if not re.fullmatch(r"\w+", name):
        raise DataError(f"invalid Amazon category {category!r}; e.g. Beauty, Sports_and_Outdoors, Toys_and_Games")
    return name


def file_names(category: str) -> tuple[str, str]:
    name = category_name(category)
    return f"reviews_{name}_5.json.gz", f"meta_{name}.json.gz"


def _categories_in(path: Path) -> list[str]:
    """Categories with both a reviews and a meta file in ``path``."""
    found = []
    for file in sorted(path.glob("reviews_*_5.json.gz")):
        match = _REVIEWS_RE.match(file.name)
        if match and (path / f"meta_{match.group(1)}.json.gz").is_file():
            found.append(match.group(1))
    return found


def is_amazon_dir(path: Path) -> bool:
    return bool(_categories_in(Path(path)))


# ---------------------------------------------------------------- reading


def read_amazon(path: str | Path, category: str | None = None, min_interactions: int = 3) -> Dataset:
    path = Path(path)
    if category is None:
        found = _categories_in(path)
        if len(found) != 1:
            raise DataError(
                f"{path}: expected the files of exactly one category "
                f"(reviews_<Category>_5.json.gz + meta_<Category>.json.gz), found {found or 'none'}; pass the category"
            )
        category = found[0]
    category = category_name(category)
    reviews_name, meta_name = file_names(category)
    for name in (reviews_name, meta_name):
        if not (path / name).is_file():
            raise DataError(f"{path}: no {name}")

    sequences = _read_reviews(path / reviews_name)
    items = {item for seq in sequences.values() for item in seq}
    meta = _read_meta(path / meta_name, items)
    return from_sequences(category, sequences, meta, min_interactions)


def _read_reviews(file: Path) -> dict[str, list[str]]:
    """Per-user item lists, oldest first, each item once."""
    events: dict[str, list[tuple[int, str]]] = {}
    with gzip.open(file, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(tqdm(f, desc=file.name, unit=" lines", mininterval=2), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                user, item, time = str(row["reviewerID"]), str(row["asin"]), int(row["unixReviewTime"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"{file}:{lineno}: malformed review ({type(e).__name__}: {e}); "
                    "expected a JSON object with reviewerID, asin, unixReviewTime"
                ) from None
            events.setdefault(user, []).append((time, item))

    sequences, repeats = {}, 0
    for user, user_events in events.items():
        seen: dict[str, None] = {}  # an ordered set
        for _, item in sorted(user_events, key=lambda e: e[0]):  # sorted() is stable: ties keep file order
            if item in seen:
                repeats += 1
            seen.setdefault(item)
        sequences[user] = list(seen)
    if repeats:
        log.info("%s: dropped %d repeated (user, item) reviews, keeping the earliest", file.name, repeats)
    return sequences


def _read_meta(file: Path, items: set[str]) -> dict[str, dict]:
    """Metadata of ``items``; malformed lines are skipped and counted, not fatal."""
    meta: dict[str, dict] = {}
    bad, first_bad = 0, None
    with gzip.open(file, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(tqdm(f, desc=file.name, unit=" lines", mininterval=2), 1):
            if not line.strip():
                continue
            try:
                # The 2014 meta files are Python literals, not JSON; literal_eval runs no code.
                row = ast.literal_eval(line)
                item = str(row["asin"])
            except (ValueError, SyntaxError, MemoryError, RecursionError, KeyError, TypeError) as e:
                bad += 1
                first_bad = first_bad or f"{file}:{lineno} ({type(e).__name__})"
                continue
            if item in items and item not in meta:
                meta[item] = {k: row[k] for k in META_FIELDS if _non_empty(row.get(k))}
    if bad:
        log.warning("%s: skipped %d malformed metadata lines (first: %s)", file.name, bad, first_bad)
    return meta


def _non_empty(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, dict)):
        return bool(value)
    return True


# ---------------------------------------------------------------- downloading


def download_amazon(
    category: str,
    cache_dir: str | Path,
    base_url: str = BASE_URL,
    sha256: dict[str, str | None] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the reviews and meta files of ``category``; return the directory holding them.

    Files already in ``cache_dir/<Category>/`` that pass the integrity check are
    not downloaded again; a corrupt one is replaced.
    """
    category = category_name(category)
    target = Path(cache_dir) / category
    hashes = KNOWN_SHA256 if sha256 is None else sha256
    for name in file_names(category):
        file = target / name
        if file.is_file():
            problem = _check_file(file, hashes.get(name))
            if problem is None:
                log.info("%s: already downloaded", file)
                continue
            log.warning("%s: cached file is corrupt (%s); downloading it again", file, problem)
        _download(base_url.rstrip("/") + "/" + name, file, hashes.get(name), timeout, category)
    return target


def _download(url: str, file: Path, expected_sha256: str | None, timeout: float, category: str) -> None:
    log.info("downloading %s", url)
    # Written to a temporary file and renamed only once checked, so a kill never leaves half a file.
    with atomic_path(file) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                received = 0
                with tqdm(total=total, desc=file.name, unit="B", unit_scale=True, unit_divisor=1024) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            names = " and ".join(file_names(category))
            raise DataError(
                f"download of {url} failed ({e}). Download {names} by hand (see {INFO_URL}), "
                f"put them in one directory DIR and pass --data-dir DIR"
            ) from None
        problem = _check_file(tmp, expected_sha256)
        if problem is not None:
            raise DataError(
                f"downloaded {url} is corrupt ({problem}); try again, or download it by hand and pass --data-dir DIR"
            )


def _check_file(file: Path, expected_sha256: str | None) -> str | None:
    """None when ``file`` is a complete gzip stream (with the expected hash, if known); else the problem."""
    try:
        with gzip.open(file, "rb") as f:
            while f.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
        return f"not a complete gzip file: {e}"
    if expected_sha256:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != expected_sha256.lower():
            return f"sha256 {digest.hexdigest()} != expected {expected_sha256}"
    return None
