"""Semantic IDs: unique IDs from quantiser codes.

Items whose ``levels`` codes coincide get a collision suffix that counts them 0, 1, 2, ... in item
order (0 when unique), so every item has a unique ID such as (7, 1, 4, 0). The suffix is one code
while no group of items sharing their codes outgrows the codebook (``codebook_size`` values). When
the largest group has more items, the suffix is ``s = ceil(log_codebook_size(largest group))``
codes for every item, the base-``codebook_size`` digits of its index in its group, most significant
first: with 256 codes, 300 items on one prefix make every ID 3 + 2 codes long, (7, 1, 4, 0, 0),
(7, 1, 4, 0, 1), ..., (7, 1, 4, 1, 43). IDs are all one length (``SemanticIDs.length``); code
that needs the ID length reads it from the IDs, never from ``ids.levels``.

RPG's long unordered IDs (``ids.scheme=opq``) have no collision code: the ID is the
quantiser's codes, and items sharing all of them tie in score (``has_collision_code``).
"""

from __future__ import annotations

import csv
import gc
import io
import logging
import operator
import re
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from .errors import TigerrecError
from .io import atomic_path

log = logging.getLogger(__name__)

IDS_FILE = "semantic_ids.csv"
_SUFFIX_COLUMN = re.compile(r"s[1-9][0-9]*")


class CollisionError(TigerrecError):
    pass


def has_collision_code(scheme: str) -> bool:
    """Whether the IDs of an ``ids.scheme`` end in a collision code: all but opq, whose unordered codes
    are scored independently (a collision code would be one more code to predict, telling nothing)."""
    return scheme != "opq"


def group_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identical rows of an (N, m) integer array, grouped: ``inverse`` (N,), the group of each row, and
    ``counts`` (groups,), the rows in each; groups are numbered in the lexicographic order of their rows.
    What ``np.unique(rows, axis=0, return_inverse=True, return_counts=True)`` gives, faster: rows of
    non-negative codes are packed into one int64 key when they fit, others sorted column by column."""
    rows = np.asarray(rows)
    n = len(rows)
    if n == 0 or rows.ndim != 2 or rows.shape[1] == 0:
        return np.zeros(n, dtype=np.int64), np.array([n] if n else [], dtype=np.int64)
    rows = rows.astype(np.int64, copy=False)
    radices = [int(r) + 1 for r in rows.max(0)]
    if rows.min() >= 0 and np.prod(radices, dtype=object) < 2**63:
        key = np.zeros(n, dtype=np.int64)
        for column, radix in zip(rows.T, radices):
            key *= radix
            key += column
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return inverse.ravel().astype(np.int64, copy=False), counts.astype(np.int64, copy=False)
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(1)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return inverse, np.diff(np.append(np.flatnonzero(starts), n))


def utilization(codes: np.ndarray, codebook_size: int) -> list[float]:
    """The share of the ``codebook_size`` values that occur in each column of ``codes`` (N, levels)."""
    return [
        round(int(np.count_nonzero(np.bincount(column, minlength=codebook_size))) / codebook_size, 4)
        for column in np.asarray(codes, dtype=np.int64).T
    ]


def _index_in_group(inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row's position among the rows of its group, in row order: 0, 1, 2, ..."""
    order = np.argsort(inverse, kind="stable")
    index = np.empty(len(inverse), dtype=np.int64)
    index[order] = np.arange(len(inverse)) - np.repeat(np.cumsum(counts) - counts, counts)
    return index


def suffix_length_for(largest: int, codebook_size: int) -> int:
    """Codes of the collision suffix for a largest group of ``largest`` items: the fewest digits in base
    ``codebook_size`` that count them, and at least 1."""
    length = 1
    while codebook_size**length < largest:
        length += 1
    return length


def suffix_value(suffix: np.ndarray, codebook_size: int) -> np.ndarray:
    """The index in its group that each row of suffix digits (N, s) stands for."""
    value = np.zeros(len(suffix), dtype=np.int64)
    for column in np.asarray(suffix, dtype=np.int64).T:
        value = value * codebook_size + column
    return value


def add_collision_code(
    codes: np.ndarray, capacity: int, suffix_length: int | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Append the collision suffix to each row of ``codes`` (N, levels): (N, levels + s).

    Each row's suffix is its index among the rows with the same codes (in row order), plus ``start`` (N,),
    the first free index of its group when items were assigned before, written as ``s`` digits in base
    ``capacity`` (the codebook size), most significant first. ``suffix_length`` fixes ``s`` (IDs that
    a model was trained on, which new items must match) and a group that outgrows ``capacity ** s``
    raises; by default ``s`` is the fewest digits that count the largest group.
    """
    codes = np.asarray(codes, dtype=np.int64)
    index = _index_in_group(*group_rows(codes))
    if start is not None:
        index += np.asarray(start, dtype=np.int64)
    largest = int(index.max()) + 1 if len(index) else 0
    length = suffix_length if suffix_length is not None else suffix_length_for(largest, capacity)
    if largest > capacity**length:
        worst = tuple(int(c) for c in codes[index.argmax()])
        values = f"{capacity} values of the collision code"
        if length > 1:
            values = f"{capacity**length} values ({capacity}^{length}) of the {length}-code collision suffix"
        raise CollisionError(
            f"{largest} items share the codes {worst}, more than the {values}; the IDs' length is fixed once "
            "a model is trained on them: build the Semantic IDs again with these items (a longer suffix), "
            "use a larger codebook, or another ID scheme"
        )
    suffix = np.empty((len(codes), length), dtype=np.int64)
    for digit in range(length - 1, -1, -1):
        suffix[:, digit] = index % capacity
        index //= capacity
    return np.concatenate([codes, suffix], axis=1)


@dataclass
class SemanticIDs:
    """The ID table: ``item_ids[i]`` has the tuple ``codes[i]``: the quantiser's ``levels`` codes and a
    collision suffix of ``suffix_length`` codes (1 unless a group of items sharing their codes outgrows
    the codebook), or the ``levels`` codes alone without a collision code (``suffix_length`` 0)."""

    item_ids: list[str]
    codes: np.ndarray  # (N, levels + suffix_length) int64
    codebook_size: int
    collision_code: bool = True  # False: IDs are the quantiser codes as they are, and may repeat
    suffix_length: int | None = None  # codes of the collision suffix; None: 1 with a collision code, else 0

    def __post_init__(self):
        if self.suffix_length is None:
            self.suffix_length = 1 if self.collision_code else 0
        if (self.suffix_length > 0) != self.collision_code or self.suffix_length > self.codes.shape[1]:
            raise ValueError(
                f"a collision suffix of {self.suffix_length} codes does not fit IDs of {self.codes.shape[1]} "
                f"codes {'with' if self.collision_code else 'without'} a collision code"
            )

    @classmethod
    def from_codes(
        cls, item_ids: list[str], codes: np.ndarray, codebook_size: int, collision_code: bool = True
    ) -> SemanticIDs:
        if len(item_ids) != len(codes):
            raise ValueError(f"{len(item_ids)} items but {len(codes)} code rows")
        codes = np.asarray(codes, dtype=np.int64)
        suffix_length = 0
        if collision_code:
            levels = codes.shape[1]
            codes = add_collision_code(codes, codebook_size)
            suffix_length = codes.shape[1] - levels
            if suffix_length > 1:
                log.warning(
                    "a group of more than %d items shares its %d quantiser codes: every Semantic ID ends in a "
                    "collision suffix of %d codes (%d codes in all)",
                    codebook_size,
                    levels,
                    suffix_length,
                    codes.shape[1],
                )
        return cls(list(item_ids), codes, codebook_size, collision_code, suffix_length)

    @property
    def length(self) -> int:
        """Codes per ID: the quantiser's and the collision suffix's."""
        return self.codes.shape[1]

    @property
    def quantized(self) -> np.ndarray:
        """The quantiser's codes of every item: the IDs less the collision suffix."""
        return self.codes[:, : self.length - self.suffix_length]

    def add_items(self, item_ids: list[str], codes: np.ndarray) -> SemanticIDs:
        """IDs for new (e.g. cold-start) items: same quantiser codes, the next free collision suffixes of
        their groups (one past the largest a known item has), as long as the known IDs: a new item that
        would need a longer suffix is a ``CollisionError``."""
        known = set(self.item_ids)
        clash = [i for i in item_ids if i in known]
        if clash:
            raise ValueError(f"items already have Semantic IDs: {clash[:5]}")
        new = np.asarray(codes, dtype=np.int64)
        levels = self.length - self.suffix_length
        if new.ndim != 2 or new.shape[1] != levels:
            raise ValueError(f"expected {levels} quantiser codes per new item, got codes of shape {new.shape}")
        if self.collision_code:
            inverse, counts = group_rows(np.concatenate([self.quantized, new]))
            taken = np.zeros(len(counts), dtype=np.int64)  # per group: one past the largest suffix in use
            used = suffix_value(self.codes[:, levels:], self.codebook_size) + 1
            np.maximum.at(taken, inverse[: len(self.codes)], used)
            new = add_collision_code(
                new, self.codebook_size, self.suffix_length, start=taken[inverse[len(self.codes) :]]
            )
        return SemanticIDs(
            self.item_ids + list(item_ids),
            np.concatenate([self.codes, new]),
            self.codebook_size,
            self.collision_code,
            self.suffix_length,
        )

    def collision_groups(self) -> Counter:
        """Histogram: group size -> number of prefixes (quantiser code tuples) with that many items."""
        sizes, prefixes = np.unique(group_rows(self.quantized)[1], return_counts=True)
        return Counter(dict(zip(sizes.tolist(), prefixes.tolist())))

    def metrics(self) -> dict:
        """Codebook use per level and how many items share their quantiser codes (the prefix before the
        collision suffix; without one, the whole ID)."""
        prefixes = self.quantized
        inverse, counts = group_rows(prefixes)
        per_item = counts[inverse]
        sizes, groups = np.unique(counts, return_counts=True)
        return {
            "items": len(self.item_ids),
            "utilization": utilization(prefixes, self.codebook_size),
            "unique_prefix_share": round(float((per_item == 1).mean()), 4),
            "max_collision_group": int(per_item.max()),
            "collision_group_sizes": {str(k): v for k, v in zip(sizes.tolist(), groups.tolist())},
            "unique_ids": bool(group_rows(self.codes)[1].max() == 1),
            "id_length": self.length,
            "suffix_length": self.suffix_length,
        }

    def column_names(self) -> list[str]:
        """The code columns of ``semantic_ids.csv``: c1, c2, ... for every code when the collision suffix
        is at most one code (the one a model trained on is the last cN), else c1..c<levels> then s1..s<s>."""
        if self.suffix_length <= 1:
            return [f"c{i + 1}" for i in range(self.length)]
        levels = self.length - self.suffix_length
        return [f"c{i + 1}" for i in range(levels)] + [f"s{i + 1}" for i in range(self.suffix_length)]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / IDS_FILE
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["item_id", *self.column_names()])
            writer.writerows(zip(self.item_ids, *self.codes.T.tolist()))
        return path

    @classmethod
    def load(cls, directory: str | Path, codebook_size: int = 256, collision_code: bool = True) -> SemanticIDs:
        """The table ``save`` wrote; IDs with a ``collision_code`` must be unique. Columns s1, s2, ... at the
        end are the collision suffix; without them, the last column is (with a ``collision_code``).

        A table as ``save`` writes it (no quoted item ids) is parsed by numpy; any other, or one with a
        malformed row, by the csv module, row by row, so the error names the first bad row."""
        path = Path(directory) / IDS_FILE if Path(directory).is_dir() else Path(directory)
        if not path.is_file():
            raise FileNotFoundError(f"no Semantic IDs at {path}; run `tigerrec ids` first")
        try:
            with open(path, newline="") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise TigerrecError(f"{path} is not a Semantic IDs table ({e})") from None
        lines = _plain_lines(text)
        rows = _csv_rows(text, path) if lines is None else None
        header = (lines[0].split(",") if lines else []) if rows is None else (rows[0] if rows else [])
        if not header or header[0] != "item_id" or len(header) < 2:
            raise TigerrecError(f"{path}: expected a header 'item_id,c1,...'")
        if len(lines if rows is None else rows) < 2:
            raise TigerrecError(f"{path} holds no items")
        width = len(header)
        suffix_length = 0
        while suffix_length < width - 1 and _SUFFIX_COLUMN.fullmatch(header[width - 1 - suffix_length]):
            suffix_length += 1
        if suffix_length and not collision_code:
            raise TigerrecError(
                f"{path}: the columns {', '.join(header[width - suffix_length :])} are a collision suffix, "
                "but these IDs have none (ids.scheme=opq)"
            )
        parsed = _parse_lines(lines[1:], width, codebook_size) if rows is None else None
        if parsed is None:  # quoted ids or a malformed row somewhere: the csv module's rows
            if rows is None:
                rows = _csv_rows(text, path)
            del lines, text
            parsed = _parse_rows(rows[1:], width, codebook_size)
            if parsed is None:
                names = [f"c{i + 1}" for i in range(width - 1 - suffix_length)]
                names += [f"s{i + 1}" for i in range(suffix_length)]
                raise _row_error(rows[1:], width, codebook_size, names, path)
        item_ids, codes = parsed
        if collision_code and group_rows(codes)[1].max() > 1:
            raise TigerrecError(f"{path}: Semantic IDs are not unique")
        suffix_length = (suffix_length or 1) if collision_code else 0
        return cls(item_ids, codes, codebook_size, collision_code, suffix_length)


def _plain_lines(text: str) -> list[str] | None:
    """The lines of a table with no quoted field (as ``save`` writes one), where a line is what the csv
    module reads as a row; None for any other text."""
    if '"' in text or "\0" in text:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _csv_rows(text: str, path: Path) -> list[list[str]]:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a million lists, none of them cyclic: collections would only rescan them
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise TigerrecError(f"{path} is not a Semantic IDs table ({e})") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _in_range(codes: np.ndarray, codebook_size: int) -> bool:
    return not len(codes) or (codes.min() >= 0 and codes.max() < codebook_size)


def _parse_lines(lines: list[str], width: int, codebook_size: int) -> tuple[list[str], np.ndarray] | None:
    """Item ids and codes of unquoted lines, by numpy; None when a line is not ``width`` fields of an id and
    integer codes in range (or numpy reads a code that ``int`` would: then the csv path decides)."""
    commas = np.fromiter(map(operator.methodcaller("count", ","), lines), dtype=np.int64, count=len(lines))
    if (commas != width - 1).any():
        return None
    try:
        codes = np.loadtxt(
            lines, delimiter=",", usecols=range(1, width), dtype=np.int64, comments=None, quotechar=None, ndmin=2
        )
    except ValueError:
        return None
    if len(codes) != len(lines) or not _in_range(codes, codebook_size):
        return None
    return [line.partition(",")[0] for line in lines], codes


def _parse_rows(rows: list[list[str]], width: int, codebook_size: int) -> tuple[list[str], np.ndarray] | None:
    """Item ids and codes of the csv module's rows, or None when a row is malformed."""
    if any(len(row) != width for row in rows):
        return None
    try:
        codes = _codes_of_rows(rows, width)
    except (ValueError, OverflowError):
        return None
    return ([row[0] for row in rows], codes) if _in_range(codes, codebook_size) else None


def _codes_of_rows(rows: list[list[str]], width: int) -> np.ndarray:
    flat = np.fromiter(map(int, chain.from_iterable(row[1:] for row in rows)), dtype=np.int64)
    return flat.reshape(len(rows), width - 1)


def _row_error(rows: list[list[str]], width: int, codebook_size: int, names: list[str], path: Path) -> TigerrecError:
    """What is wrong with the first malformed row (rows count from 1 after the header). Codes index
    embedding tables and the trie, so one out of range would fail far from here (or silently alias
    another code)."""
    for r, row in enumerate(rows, 1):
        where = f"{path}, row {r} (item {row[0] if row else ''!r})"
        if len(row) != width:
            return TigerrecError(f"{where}: {len(row)} columns, expected {width}")
        for c, value in enumerate(row[1:]):
            try:
                code = int(value)
            except ValueError:
                return TigerrecError(f"{where}: non-integer code {names[c]}={value!r}")
            if not 0 <= code < codebook_size:
                return TigerrecError(
                    f"{where}: code {names[c]}={code} is outside 0..{codebook_size - 1} "
                    f"(ids.codebook_size={codebook_size})"
                )
    return TigerrecError(f"{path} is not a Semantic IDs table")
