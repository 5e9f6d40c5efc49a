"""Datasets: readers for every supported format, all producing one ``Dataset``.

``load_dataset`` picks the reader from what a directory holds:
- P5 format (``sequential_data.txt``; the benchmark data),
- raw Amazon 2014 files (``reviews_<Category>_5.json.gz`` + ``meta_<Category>.json.gz``),
- custom tables (``interactions.csv|parquet`` + optional ``items.csv|parquet``),
or generates the ``tiny`` synthetic dataset.
"""

from __future__ import annotations

from pathlib import Path

from . import p5
from .dataset import META_FIELDS, DataError, Dataset, Split, from_sequences, leave_one_out
from .synthetic import make_scale, make_tiny

__all__ = [
    "Dataset",
    "DataError",
    "Split",
    "META_FIELDS",
    "from_sequences",
    "leave_one_out",
    "load_dataset",
    "make_scale",
    "make_tiny",
]


def load_dataset(source: str | Path, min_interactions: int = 3) -> Dataset:
    if str(source) == "tiny":
        return make_tiny()
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"dataset directory not found: {path}")
    from . import amazon, custom  # imported here: they pull in optional table readers

    if p5.is_p5_dir(path):
        return p5.read_p5(path, min_interactions=min_interactions)
    if amazon.is_amazon_dir(path):
        return amazon.read_amazon(path, min_interactions=min_interactions)
    if custom.is_custom_dir(path):
        return custom.read_custom(path, min_interactions=min_interactions)
    raise DataError(
        f"{path}: no known dataset format. Expected {p5.SEQUENCES_FILE} (P5), "
        "reviews_<Category>_5.json.gz + meta_<Category>.json.gz (raw Amazon 2014), "
        "or interactions.csv/.parquet (+ items.csv/.parquet) (custom)"
    )
