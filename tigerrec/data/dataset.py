"""The one in-memory form every reader produces, and the leave-one-out split."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import TigerrecError

log = logging.getLogger(__name__)

# Item metadata fields the text template can use; readers fill what they have.
META_FIELDS = ("title", "price", "brand", "categories", "description")


class DataError(TigerrecError):
    """Input data is missing or malformed; the message names the file and the problem."""


@dataclass
class Dataset:
    """Users, items and each user's chronological item sequence.

    Items and users are addressed internally by contiguous indices 0..N-1;
    ``item_ids`` / ``user_ids`` hold the external ids (strings) in that order.
    ``sequences[u]`` is an int array of item indices, oldest first.
    ``item_meta[i]`` is a dict with any of META_FIELDS (missing fields absent or None).
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    sequences: list[np.ndarray]
    item_meta: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if len(self.user_ids) != len(self.sequences):
            raise DataError(f"{self.name}: {len(self.user_ids)} users but {len(self.sequences)} sequences")
        if not self.item_meta:
            self.item_meta = [{} for _ in self.item_ids]
        if len(self.item_meta) != len(self.item_ids):
            raise DataError(f"{self.name}: {len(self.item_ids)} items but {len(self.item_meta)} metadata rows")
        for ids, what in ((self.user_ids, "user"), (self.item_ids, "item")):
            if len(set(ids)) != len(ids):
                raise DataError(f"{self.name}: duplicate {what} ids")
        self._item_index = {item: i for i, item in enumerate(self.item_ids)}

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_index(self, item_id: str) -> int:
        """Internal index of an external item id; KeyError names the unknown id."""
        try:
            return self._item_index[str(item_id)]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r} (dataset {self.name} has {self.num_items} items)") from None

    def stats(self) -> dict:
        lengths = np.array([len(s) for s in self.sequences])
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "min_len": int(lengths.min()),
            "mean_len": round(float(lengths.mean()), 2),
            "max_len": int(lengths.max()),
        }


def unescape_meta(meta: dict) -> dict:
    """Item metadata with HTML entities (``&amp;``, ``&#39;``: the raw Amazon strings hold them) turned
    into the characters they stand for, in strings and lists of strings. Readers call it once, when the
    metadata enter tigerrec, so every later use (sentences, items.jsonl, the API, the report) holds real text."""

    def plain(value):
        if isinstance(value, str):
            return html.unescape(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {key: plain(value) for key, value in meta.items()}


def from_sequences(
    name: str,
    sequences: dict[str, list[str]],
    item_meta: dict[str, dict],
    min_interactions: int = 3,
) -> Dataset:
    """Build a Dataset from external ids, with the checks every reader needs.

    Users with fewer than ``min_interactions`` items (no room for train, valid
    and test) are skipped and counted. Items with no metadata keep an empty
    record and are counted, so a template never silently invents text.
    """
    kept, skipped = {}, 0
    for user, items in sequences.items():
        if len(items) < min_interactions:
            skipped += 1
            continue
        kept[user] = items
    if skipped:
        log.warning("%s: skipped %d users with fewer than %d interactions", name, skipped, min_interactions)
    if not kept:
        raise DataError(f"{name}: no user has at least {min_interactions} interactions")

    # Items are numbered in order of first appearance, as in the P5 preprocessing.
    item_index: dict[str, int] = {}
    for items in kept.values():
        for item in items:
            item_index.setdefault(item, len(item_index))
    item_ids = list(item_index)
    missing = [i for i in item_ids if i not in item_meta]
    if missing:
        log.warning(
            "%s: %d items have no metadata (e.g. %s); their text will be empty", name, len(missing), missing[:3]
        )
    return Dataset(
        name=name,
        user_ids=list(kept),
        item_ids=item_ids,
        sequences=[np.array([item_index[i] for i in items], dtype=np.int64) for items in kept.values()],
        item_meta=[unescape_meta(item_meta.get(i, {})) for i in item_ids],
    )


@dataclass
class Split:
    """Leave-one-out: last item = test target, second to last = validation target.

    ``train[u]`` is the training part of user u's sequence (everything before the
    validation item). Training samples are every prefix of it (see sequences.py).
    """

    train: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    valid_history: list[np.ndarray]
    test_history: list[np.ndarray]


def leave_one_out(dataset: Dataset, backtest: int = 0) -> Split:
    """The last item of each user is the test target, the one before it the validation target.

    ``backtest`` > 0 first drops each user's last ``backtest`` items, so the split moves that many
    steps back in time: with 1, the "test" targets are the real validation items and the real test
    items are never read. A recipe tuned on validation can then be checked on whether its gain
    carries one step forward in time without touching the test split.
    """
    needed = 3 + backtest
    short = [u for u, s in zip(dataset.user_ids, dataset.sequences) if len(s) < needed]
    if short:
        why = f"3 plus data.backtest={backtest}; set data.min_interactions={needed} to skip them" if backtest else "3"
        raise DataError(
            f"{dataset.name}: {len(short)} users have fewer than {needed} items (e.g. {short[:3]}); "
            f"leave-one-out needs {why}"
        )
    if backtest:
        log.info(
            "%s: backtest: every user's last %d items are left out; validation and test are %d steps early",
            dataset.name,
            backtest,
            backtest,
        )
    sequences = [s[: len(s) - backtest] for s in dataset.sequences]
    return Split(
        train=[s[:-2] for s in sequences],
        valid_target=np.array([s[-2] for s in sequences], dtype=np.int64),
        test_target=np.array([s[-1] for s in sequences], dtype=np.int64),
        valid_history=[s[:-2] for s in sequences],
        test_history=[s[:-1] for s in sequences],
    )
