"""A catalogue that grows without retraining: new items get Semantic IDs from the run's frozen quantiser.

    tigerrec add-items runs/beauty new_items.csv
    Recommender.load("runs/beauty").add_items("new_items.csv")

New items (an items table as in ``tigerrec.data.custom``: CSV or Parquet with an ``item_id``
column and text columns) are embedded with the run's text encoder and template, quantised by
the run's trained quantiser (``ids/quantizer.safetensors``) and, with TIGER's IDs, given the
next free collision codes of their prefixes, so no existing item's ID changes. The model is not
retrained: TIGER's beam search reaches the new IDs through the prefix trie, RPG scores them from
their codes like any other item.

The run records them in ``ids/semantic_ids.csv``, ``ids/item_vectors.npy`` (what serving ranks new
items by, ``new_items``), ``items.jsonl`` and ``catalogue.json`` (the number of items the model was
trained with, which later items count as new, and a log of each addition). Every file is replaced
atomically, in an order that keeps the run usable if the process dies in between; a failed addition
leaves the run as it was.
"""

from __future__ import annotations

import logging
import string
import time
from pathlib import Path

import numpy as np

from .data.custom import read_items_table
from .data.dataset import unescape_meta
from .errors import TigerrecError
from .io import RunLock, read_json, write_bytes, write_json, write_text
from .new_items import load_item_vectors, save_item_vectors
from .quantize import load_quantizer
from .rundir import IDS_DIR, IDS_METRICS, ITEMS_FILE, QUANTIZER_FILE, items_text, load_ids, read_items, read_run_config
from .semantic_ids import IDS_FILE, CollisionError
from .text import TextEncoder, item_sentence, read_item_vectors

log = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.json"


def trained_items(run_dir: str | Path) -> int | None:
    """How many items (the first rows of the run's IDs) the model was trained with; None when the
    catalogue never grew (all of them)."""
    path = Path(run_dir) / CATALOGUE_FILE
    return int(read_json(path)["trained_items"]) if path.is_file() else None


def read_new_items(path: str | Path) -> dict[str, dict]:
    """{item id: metadata} from an items table; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise TigerrecError(f"no items table at {path}")
    if path.suffix not in (".csv", ".parquet"):
        raise TigerrecError(f"{path}: expected an items table (.csv or .parquet with an item_id column)")
    try:
        items = read_items_table(path)
    except UnicodeDecodeError as e:
        raise TigerrecError(f"{path} is not UTF-8 text ({e})") from None
    if not items:
        raise TigerrecError(f"{path} holds no items")
    return {item: unescape_meta(meta) for item, meta in items.items()}


def add_items(run_dir: str | Path, items: str | Path | dict[str, dict], vectors: str | Path | None = None) -> dict:
    """Give new items Semantic IDs in a finished run directory and record them; returns a summary.

    ``items`` is an items table's path or {item id: metadata}. A run whose IDs were fitted on
    precomputed vectors (``text.embeddings_file``) takes the new items' ``vectors`` from a file of the
    same format (``text.read_item_vectors``); any other run embeds their text. Raises TigerrecError,
    with nothing written, for items already in the catalogue, items with no text (or no vector), an
    encoder other than the one the run's IDs were made with, or a prefix whose collision codes would
    overflow, and when another process is writing the run directory (``io.RunLock``).
    """
    with RunLock(run_dir, "add-items"):
        return _add_items(run_dir, items, vectors)


def _add_items(run_dir: str | Path, items: str | Path | dict[str, dict], vectors: str | Path | None = None) -> dict:
    start = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ids_dir = run_dir / IDS_DIR
    ids = load_ids(ids_dir, cfg)
    catalogue = read_items(run_dir / ITEMS_FILE)
    new = read_new_items(items) if isinstance(items, (str, Path)) else dict(items)
    if not new:
        raise TigerrecError("no items to add")
    known = set(ids.item_ids)
    present = [item for item in new if item in known]
    if present:
        raise TigerrecError(
            f"{len(present)} of the new items are already in the catalogue of {run_dir}: "
            f"{', '.join(map(repr, present[:5]))}{' ...' if len(present) > 5 else ''}"
        )
    embeddings = _new_item_vectors(run_dir, cfg, new, vectors)
    quantizer = load_quantizer(ids_dir / QUANTIZER_FILE)
    try:
        grown = ids.add_items(list(new), quantizer.encode(embeddings))
    except CollisionError as e:
        raise TigerrecError(f"cannot add these items to {run_dir}: {e}") from None

    # Written in an order that is safe to die in: the trained-item count holds before and after;
    # extra metadata is ignored until the IDs list the items; the IDs are the switch. An error on
    # the way puts back what was there.
    catalogue_path, items_path = run_dir / CATALOGUE_FILE, run_dir / ITEMS_FILE
    before = {
        path: path.read_bytes() if path.is_file() else None for path in (catalogue_path, items_path, ids_dir / IDS_FILE)
    }
    record = (
        read_json(catalogue_path)
        if before[catalogue_path] is not None
        else {"trained_items": len(ids.item_ids), "additions": []}
    )
    summary = {
        "added": len(new),
        "items": len(grown.item_ids),
        "trained_items": record["trained_items"],
        "seconds": round(time.perf_counter() - start, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source": str(items) if isinstance(items, (str, Path)) else "python",
    }
    stored = load_item_vectors(ids_dir, len(ids.item_ids))  # memory-mapped: it outlives the file's replacement
    try:
        if stored is not None:  # rows past the IDs' are ignored until the IDs list their items
            save_item_vectors(ids_dir, np.concatenate([stored, embeddings.astype(stored.dtype)]))
        write_json(catalogue_path, record)
        grown_items = {**catalogue, **new}
        write_text(items_path, items_text(grown_items.keys(), grown_items.values()))
        grown.save(ids_dir)
        write_json(catalogue_path, {**record, "additions": [*record["additions"], summary]})
    except BaseException:
        if stored is not None:
            save_item_vectors(ids_dir, stored)
        for path, content in before.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                write_bytes(path, content)
        raise
    log.info("added %d items to %s (%d in all) in %.1f s", len(new), run_dir, len(grown.item_ids), summary["seconds"])
    return summary


def _new_item_vectors(run_dir: Path, cfg, new: dict[str, dict], vectors: str | Path | None) -> np.ndarray:
    """The new items' vectors in the space the run's IDs were fitted in: read from ``vectors`` where the
    run used precomputed vectors, embedded from their text by the run's encoder otherwise."""
    if cfg.text.embeddings_file:
        if vectors is None:
            raise TigerrecError(
                f"the IDs of {run_dir} were fitted on precomputed vectors (text.embeddings_file); "
                "give the new items' vectors too (--vectors FILE, keyed by item id)"
            )
        return read_item_vectors(vectors, list(new))[0]
    if vectors is not None:
        raise TigerrecError(f"the IDs of {run_dir} were fitted on text embeddings, not on vectors: drop --vectors")
    texts = [item_sentence(meta, cfg.text.template) for meta in new.values()]
    empty = [item for item, text in zip(new, texts) if not text]
    if empty:
        raise TigerrecError(
            f"{len(empty)} new items have no text to embed (no {', '.join(_fields(cfg.text.template))}): "
            f"{', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''}"
        )
    encoder = TextEncoder(cfg.text.encoder, cfg.text.batch_size)
    made_with = read_json(run_dir / IDS_DIR / IDS_METRICS).get("encoder")
    if made_with and made_with != encoder.label:
        raise TigerrecError(
            f"the IDs of {run_dir} were made with the encoder {made_with!r}, but text.encoder="
            f"{cfg.text.encoder!r} is {encoder.label!r} here; install or point to {made_with!r}"
        )
    return encoder.encode(texts, use_cache=False)


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]
