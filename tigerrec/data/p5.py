"""Reader (and writer) for P5-format dataset directories.

A directory holds ``sequential_data.txt`` (``user item item ...`` per line, items
in chronological order), optionally ``datamaps.json`` (``id2item``: id -> ASIN)
and ``item_meta.jsonl.gz`` (one JSON object per item with ``item_id``, ``title``,
``brand``, ``categories``, ``price``, ``description``).
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from ..io import atomic_path
from .dataset import META_FIELDS, DataError, Dataset, from_sequences

log = logging.getLogger(__name__)

SEQUENCES_FILE = "sequential_data.txt"
META_FILE = "item_meta.jsonl.gz"


def is_p5_dir(path: Path) -> bool:
    return (path / SEQUENCES_FILE).is_file()


def read_p5(path: str | Path, name: str | None = None, min_interactions: int = 3) -> Dataset:
    path = Path(path)
    seq_file = path / SEQUENCES_FILE
    if not seq_file.is_file():
        raise DataError(f"{path}: no {SEQUENCES_FILE}; is this a P5 dataset directory?")
    sequences: dict[str, list[str]] = {}
    for lineno, line in enumerate(seq_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{seq_file}:{lineno}: expected 'user item item ...', got {line!r}")
        user, items = fields[0], fields[1:]
        if user in sequences:
            raise DataError(f"{seq_file}:{lineno}: user {user} appears twice")
        sequences[user] = items

    meta: dict[str, dict] = {}
    meta_file = path / META_FILE
    if meta_file.is_file():
        with gzip.open(meta_file, "rt") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    item = str(row["item_id"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{meta_file}:{lineno}: malformed item record ({e})") from None
                if item in meta:
                    raise DataError(f"{meta_file}:{lineno}: item {item} appears twice")
                # The ASIN rides along: a titles file (text.titles_file) may be keyed by it.
                meta[item] = {k: row.get(k) for k in ("asin", *META_FIELDS) if row.get(k) is not None}
    else:
        log.warning("%s: no %s; items have no text (only ID schemes without text will be meaningful)", path, META_FILE)
    return from_sequences(name or path.name, sequences, meta, min_interactions)


def write_p5(dataset: Dataset, path: str | Path) -> None:
    """Write ``dataset`` as a P5 directory (used for generated and converted data)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        " ".join([user] + [dataset.item_ids[i] for i in seq]) for user, seq in zip(dataset.user_ids, dataset.sequences)
    ]
    with atomic_path(path / SEQUENCES_FILE) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(path / META_FILE) as tmp, gzip.open(tmp, "wt") as f:
        for item, meta in zip(dataset.item_ids, dataset.item_meta):
            f.write(json.dumps({"item_id": item, **meta}) + "\n")
