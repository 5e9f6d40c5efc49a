"""Reader for custom data: an interactions table and an optional items table.

A directory holds:

- ``interactions.csv`` or ``interactions.parquet`` (required), one row per
  interaction, with columns ``user_id``, ``item_id``, ``timestamp`` (others are
  ignored). A timestamp is a number (any unit, e.g. Unix seconds; only the order
  matters) or an ISO-8601 string (``2014-03-01``, ``2014-03-01T12:30:00Z``; no
  time zone means UTC); one file must not mix numbers and ISO strings. Each
  user's items are sorted by timestamp, ties keeping file order; a repeated
  (user, item) pair is kept once (its earliest row), as in the Amazon data.
- ``items.csv`` or ``items.parquet`` (optional), one row per item, with an
  ``item_id`` column and any text columns. ``title``, ``price``, ``brand``,
  ``categories`` and ``description`` fill the default template; other non-empty
  columns are kept under their own names, so a custom ``--template`` can use
  ``{name}``. In CSV, ``categories`` is ``"A > B | C > D"`` (paths separated by
  ``|``, levels by ``>``) or plain text (one category); in Parquet it may also be
  a list. A ``price`` that reads as a number is formatted as one (``$12.50``).

CSV files are UTF-8 (a byte-order mark is fine) with a header row. Parquet needs
``pyarrow`` (``pip install pyarrow``). Users with fewer than ``min_interactions``
items are dropped; items without an items row get no text (both are counted in
a warning).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from .dataset import DataError, Dataset, from_sequences

log = logging.getLogger(__name__)

INTERACTIONS = "interactions"
ITEMS = "items"


def _table_file(path: Path, stem: str) -> Path | None:
    """``stem.csv`` or ``stem.parquet`` in ``path``; both at once is an error."""
    found = [path / f"{stem}.{ext}" for ext in ("csv", "parquet") if (path / f"{stem}.{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{path}: both {stem}.csv and {stem}.parquet exist; keep one")
    return found[0] if found else None


def is_custom_dir(path: Path) -> bool:
    path = Path(path)
    return any((path / f"{INTERACTIONS}.{ext}").is_file() for ext in ("csv", "parquet"))


def read_custom(path: str | Path, min_interactions: int = 3, name: str | None = None) -> Dataset:
    path = Path(path)
    file = _table_file(path, INTERACTIONS)
    if file is None:
        raise DataError(f"{path}: no {INTERACTIONS}.csv or {INTERACTIONS}.parquet")

    events: dict[str, list[tuple[float, str]]] = {}
    kinds: dict[str, str] = {}  # timestamp kind ("number"/"ISO-8601") -> first row, to catch mixed files
    for where, row in _rows(file, ("user_id", "item_id", "timestamp")):
        user, item = _id(row["user_id"], where, "user_id"), _id(row["item_id"], where, "item_id")
        time, kind = _timestamp(row["timestamp"], where)
        kinds.setdefault(kind, where)
        if len(kinds) > 1:
            raise DataError(
                f"{file}: timestamps mix numbers ({kinds['number']}) and ISO-8601 strings "
                f"({kinds['ISO-8601']}); their order cannot be compared, use one form"
            )
        events.setdefault(user, []).append((time, item))

    sequences, repeats = {}, 0
    for user, user_events in events.items():
        seen: dict[str, None] = {}  # an ordered set
        for _, item in sorted(user_events, key=lambda e: e[0]):  # stable: ties keep file order
            if item in seen:
                repeats += 1
            seen.setdefault(item)
        sequences[user] = list(seen)
    if repeats:
        log.warning("%s: dropped %d repeated (user, item) rows, keeping the earliest", file.name, repeats)

    meta: dict[str, dict] = {}
    items_file = _table_file(path, ITEMS)
    if items_file is not None:
        meta = read_items_table(items_file)
    else:
        log.warning("%s: no %s.csv or %s.parquet; items have no text", path, ITEMS, ITEMS)
    return from_sequences(name or path.name, sequences, meta, min_interactions)


def read_items_table(file: Path) -> dict[str, dict]:
    """{item id: metadata} of an items table (CSV or Parquet with an item_id column), checked as above."""
    meta: dict[str, dict] = {}
    first_row: dict[str, str] = {}
    for where, row in _rows(file, ("item_id",)):
        item = _id(row.pop("item_id"), where, "item_id")
        if item in meta:
            raise DataError(f"{where}: item {item} appears twice (first at {first_row[item]})")
        first_row[item] = where
        record = {}
        for key, value in row.items():
            value = _cell(key, value)
            if value is not None:
                record[key] = value
        meta[item] = record
    return meta


def _cell(key: str, value):
    """A metadata value as the text template expects it, or None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if key == "categories":
            paths = [[level.strip() for level in p.split(">") if level.strip()] for p in value.split("|")]
            return [p for p in paths if p] or None
        if key == "price":
            try:
                number = float(value)
            except ValueError:
                return value  # e.g. "about $10": shown as written
            return number if math.isfinite(number) else value
        return value
    if isinstance(value, (list, tuple)):  # a Parquet list column
        return [list(v) if isinstance(v, (list, tuple)) else v for v in value] or None
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)  # dates and the like: keep them JSON-serialisable


def _id(value, where: str, column: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise DataError(f"{where}: empty {column}")
    return text


def _timestamp(value, where: str) -> tuple[float, str]:
    """Sort key of a timestamp and its kind ("number" or "ISO-8601")."""
    if isinstance(value, dt.datetime):  # Parquet timestamp columns
        return _seconds(value), "ISO-8601"
    if isinstance(value, dt.date):
        return _seconds(dt.datetime.combine(value, dt.time())), "ISO-8601"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value), "number"
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
            if math.isfinite(number):
                return number, "number"
        except ValueError:
            try:
                return _seconds(dt.datetime.fromisoformat(text)), "ISO-8601"
            except ValueError:
                pass
    raise DataError(f"{where}: timestamp {value!r} is neither a number nor an ISO-8601 date/time")


def _seconds(time: dt.datetime) -> float:
    if time.tzinfo is None:
        time = time.replace(tzinfo=dt.UTC)
    return time.timestamp()


def _rows(file: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV or Parquet table as dicts, each with its place ("file:line" / "file: row N")."""
    if file.suffix == ".parquet":
        yield from _parquet_rows(file, required)
        return
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        _check_columns(file, reader.fieldnames or [], required)
        for row in tqdm(reader, desc=file.name, unit=" rows", mininterval=2):
            if None in row:  # more cells than header columns
                raise DataError(f"{file}:{reader.line_num}: more cells than the header has columns")
            yield f"{file}:{reader.line_num}", row


def _parquet_rows(file: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{file}: reading Parquet needs pyarrow (`pip install pyarrow`), or convert the table to CSV"
        ) from None
    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises its own error types for unreadable files
        raise DataError(f"{file}: not a readable Parquet file ({e})") from None
    _check_columns(file, table.column_names, required)
    columns = table.to_pydict()
    for n in tqdm(range(table.num_rows), desc=file.name, unit=" rows", mininterval=2):
        yield f"{file}: row {n + 1}", {name: values[n] for name, values in columns.items()}


def _check_columns(file: Path, columns: list[str], required: tuple[str, ...]) -> None:
    for column in required:
        if column not in columns:
            raise DataError(f"{file}: missing column {column!r} (columns: {', '.join(columns) or 'none'})")
