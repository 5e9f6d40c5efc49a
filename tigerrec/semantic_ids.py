"""Semantic IDs: unique 4-token IDs from quantiser codes.

Items whose ``levels`` codes coincide get an extra last code 0, 1, 2, ... in item
order (0 when unique), so every item has a unique ID such as (7, 1, 4, 0).

RPG's long unordered IDs (``ids.scheme=opq``) have no collision code: the ID is the
quantiser's codes, and items sharing all of them tie in score (``has_collision_code``).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TigerrecError
from .io import atomic_path

IDS_FILE = "semantic_ids.csv"


class CollisionError(TigerrecError):
    pass


def has_collision_code(scheme: str) -> bool:
    """Whether the IDs of an ``ids.scheme`` end in a collision code: all but opq, whose unordered codes
    are scored independently (a collision code would be one more code to predict, telling nothing)."""
    return scheme != "opq"


def add_collision_code(codes: np.ndarray, capacity: int, taken: Counter | None = None) -> np.ndarray:
    """Append the collision code to each row of ``codes`` (N, levels).

    ``taken`` counts, per prefix, how many collision codes are already used (by
    previously assigned items); new items continue from there. Raises when a
    prefix group outgrows the last level's ``capacity``.
    """
    taken = Counter() if taken is None else taken
    last = np.empty(len(codes), dtype=np.int64)
    for i, prefix in enumerate(map(tuple, codes.tolist())):
        last[i] = taken[prefix]
        taken[prefix] += 1
    largest = max(taken.values(), default=0)
    if largest > capacity:
        worst = max(taken, key=taken.get)
        raise CollisionError(
            f"{largest} items share the codes {worst}, more than the {capacity} values of the collision "
            "code; train the quantiser longer, use a larger codebook, or another ID scheme"
        )
    return np.concatenate([codes, last[:, None]], axis=1)


@dataclass
class SemanticIDs:
    """The ID table: ``item_ids[i]`` has the tuple ``codes[i]`` (levels + 1 codes, or the levels alone
    without a collision code)."""

    item_ids: list[str]
    codes: np.ndarray  # (N, levels + 1) int64, or (N, levels)
    codebook_size: int
    collision_code: bool = True  # False: IDs are the quantiser codes as they are, and may repeat

    @classmethod
    def from_codes(
        cls, item_ids: list[str], codes: np.ndarray, codebook_size: int, collision_code: bool = True
    ) -> SemanticIDs:
        if len(item_ids) != len(codes):
            raise ValueError(f"{len(item_ids)} items but {len(codes)} code rows")
        codes = np.asarray(codes, dtype=np.int64)
        if collision_code:
            codes = add_collision_code(codes, codebook_size)
        return cls(list(item_ids), codes, codebook_size, collision_code)

    @property
    def length(self) -> int:
        return self.codes.shape[1]

    @property
    def quantized(self) -> np.ndarray:
        """The quantiser's codes of every item: the IDs less the collision code."""
        return self.codes[:, :-1] if self.collision_code else self.codes

    def add_items(self, item_ids: list[str], codes: np.ndarray) -> SemanticIDs:
        """IDs for new (e.g. cold-start) items: same quantiser codes, next free collision codes."""
        known = set(self.item_ids)
        clash = [i for i in item_ids if i in known]
        if clash:
            raise ValueError(f"items already have Semantic IDs: {clash[:5]}")
        new = np.asarray(codes, dtype=np.int64)
        if self.collision_code:
            new = add_collision_code(new, self.codebook_size, Counter(map(tuple, self.quantized.tolist())))
        return SemanticIDs(
            self.item_ids + list(item_ids), np.concatenate([self.codes, new]), self.codebook_size, self.collision_code
        )

    def collision_groups(self) -> Counter:
        """Histogram: group size -> number of prefixes (quantiser code tuples) with that many items."""
        sizes = Counter(map(tuple, self.quantized.tolist()))
        return Counter(sizes.values())

    def metrics(self) -> dict:
        """Codebook use per level and how many items share their quantiser codes (the prefix before the
        collision code; without one, the whole ID)."""
        prefixes = self.quantized
        sizes = Counter(map(tuple, prefixes.tolist()))
        per_item = np.array([sizes[p] for p in map(tuple, prefixes.tolist())])
        return {
            "items": len(self.item_ids),
            "utilization": [
                round(len(np.unique(prefixes[:, level])) / self.codebook_size, 4) for level in range(prefixes.shape[1])
            ],
            "unique_prefix_share": round(float((per_item == 1).mean()), 4),
            "max_collision_group": int(per_item.max()),
            "collision_group_sizes": {str(k): v for k, v in sorted(self.collision_groups().items())},
            "unique_ids": len(np.unique(self.codes, axis=0)) == len(self.codes),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / IDS_FILE
        header = ["item_id"] + [f"c{i + 1}" for i in range(self.length)]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for item, row in zip(self.item_ids, self.codes.tolist()):
                writer.writerow([item, *row])
        return path

    @classmethod
    def load(cls, directory: str | Path, codebook_size: int = 256, collision_code: bool = True) -> SemanticIDs:
        """The table ``save`` wrote; IDs with a ``collision_code`` must be unique."""
        path = Path(directory) / IDS_FILE if Path(directory).is_dir() else Path(directory)
        if not path.is_file():
            raise FileNotFoundError(f"no Semantic IDs at {path}; run `tigerrec ids` first")
        try:
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise TigerrecError(f"{path} is not a Semantic IDs table ({e})") from None
        if not rows or not rows[0] or rows[0][0] != "item_id" or len(rows[0]) < 2:
            raise TigerrecError(f"{path}: expected a header 'item_id,c1,...'")
        if len(rows) < 2:
            raise TigerrecError(f"{path} holds no items")
        width = len(rows[0])
        codes = np.zeros((len(rows) - 1, width - 1), dtype=np.int64)
        # Rows count from 1 after the header. Codes index embedding tables and the trie, so one
        # out of range would fail far from here (or silently alias another code).
        for r, row in enumerate(rows[1:], 1):
            where = f"{path}, row {r} (item {row[0] if row else ''!r})"
            if len(row) != width:
                raise TigerrecError(f"{where}: {len(row)} columns, expected {width}")
            for c, value in enumerate(row[1:]):
                try:
                    code = int(value)
                except ValueError:
                    raise TigerrecError(f"{where}: non-integer code c{c + 1}={value!r}") from None
                if not 0 <= code < codebook_size:
                    raise TigerrecError(
                        f"{where}: code c{c + 1}={code} is outside 0..{codebook_size - 1} "
                        f"(ids.codebook_size={codebook_size})"
                    )
                codes[r - 1, c] = code
        ids = cls([row[0] for row in rows[1:]], codes, codebook_size, collision_code)
        if collision_code and len(np.unique(codes, axis=0)) != len(codes):
            raise TigerrecError(f"{path}: Semantic IDs are not unique")
        return ids
