"""Recommendations from a finished run directory: load once, then ask for next items.

    rec = Recommender.load("runs/tiny")
    rec.recommend(["item3", "item17"], k=5)
    # [{"item_id": "item114", "score": -0.36, "semantic_id": [15, 10, 13, 1], "title": ..., "categories": ...}, ...]

The model generates Semantic IDs by beam search constrained to the catalogue
(every result is a real item); ``score`` is the model's log-probability of the
item's ID given the history, so 0 is certain and more negative is less likely (the
last code, which only tells apart items that share a prefix, among those items:
``decoding.generate``).
An RPG run (``model.kind=rpg``) scores every item exactly instead; its ``score`` is
the sum of the log-probabilities of the item's codes, predicted independently. A run
that fuses an item model (``fusion.item_model``, the default recipe's SASRec) re-ranks
the beam, and ``score`` is the fused score: the item model's log-probability plus
``fusion.weight`` times the generative one (``fusion``).

Filters (``exclude_seen``, ``exclude``, ``only``, ``category``) are enforced inside
decoding, not applied to its output: the top k holds k items that pass them whenever
k such items exist.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from . import catalogue
from .config import RunConfig
from .decoding import ItemFilter, merge_capped, new_item_cap, rank
from .device import autocast, check_device, default_device, keep_freed_memory, use_bf16
from .errors import TigerrecError
from .fusion import Fusion, load_fusion
from .members import load_best_model
from .model import SequenceModel
from .new_items import VECTORS_FILE, guided_rank, load_item_vectors
from .registry import make_model, make_tokenizer
from .rundir import BEST_MODEL, IDS_DIR, ITEMS_FILE, load_ids, read_items, read_run_config
from .semantic_ids import IDS_FILE, SemanticIDs
from .sequences import Examples

log = logging.getLogger(__name__)

MAX_K = 100  # largest k served by default; beams grow with k, and so does decoding time


class RequestError(TigerrecError):
    """A recommendation request is malformed (empty history, k out of range, wrong type, ...)."""


class UnknownItemError(KeyError):
    """Item ids the run's catalogue does not contain; ``item_ids`` lists them."""

    def __init__(self, item_ids: list[str]):
        self.item_ids = list(item_ids)
        shown = ", ".join(repr(i) for i in self.item_ids[:10])
        more = f" and {len(self.item_ids) - 10} more" if len(self.item_ids) > 10 else ""
        super().__init__(f"unknown item id{'s' if len(self.item_ids) > 1 else ''} {shown}{more}")

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return self.args[0]


@dataclass(frozen=True, eq=False)
class Query:
    """A checked request: catalogue indices of the history, its filters and the decoding settings."""

    indices: np.ndarray  # history, oldest first
    user_token: int
    k: int
    temperature: float | None
    excluded: frozenset  # item indices to leave out of the results (seen items, ``exclude``)
    seed: int | None
    beam: int
    only: frozenset | None = None  # item indices the results must come from (``only`` and ``category``)
    new_cap: int | None = None  # at most this many items added after training (``max_new_share``)
    reserve_new: bool = False  # the ``new_cap`` slots always go to the best new items


class Recommender:
    """A trained model (TIGER or RPG, ``model.kind`` in the run's config.json) with its Semantic IDs and
    item metadata, ready to recommend.

    Thread-safe: model calls from several threads run side by side (the weights are only
    read), and ``add_items`` swaps the catalogue while none runs (``SharedLock``). Servers
    with many concurrent callers should go through a ``MicroBatcher``, which runs the
    queries that arrive together in shared model calls.

    Items added after training (``add_items``, ``tigerrec add-items``) are "new": a
    request's ``max_new_share`` caps their share of the top k, and ``reserve_new`` fills that share.
    """

    def __init__(
        self,
        model: SequenceModel,
        ids: SemanticIDs,
        items: dict[str, dict],
        cfg: RunConfig,
        max_k: int = MAX_K,
        run_dir: str | Path | None = None,
        trained_items: int | None = None,
        item_vectors: np.ndarray | None = None,
        fusion: Fusion | None = None,
    ):
        self.model = model.eval()
        self.fusion = fusion  # the item model that re-ranks the beam (fusion.item_model), or None
        self.device = str(next(model.parameters()).device)
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.bf16 = use_bf16(self.device, cfg.train.bf16)
        self.requested_max_k = max_k
        self.max_history = cfg.data.max_history
        self._lock = SharedLock()  # shared by model calls, exclusive to a catalogue swap
        self._set_catalogue(ids, items, trained_items, item_vectors)

    def _set_catalogue(
        self, ids: SemanticIDs, items: dict[str, dict], trained_items: int | None, item_vectors: np.ndarray | None
    ) -> None:
        """Everything that depends on the catalogue (the model's weights do not). ``item_vectors`` (one row
        per item, ``new_items``) rank new items in reserved slots by the guided rule; without them the
        model's scores do."""
        self.ids, self.items, self.item_vectors = ids, items, item_vectors
        self.trained_items = len(ids.item_ids) if trained_items is None else trained_items
        self.tokenizer = make_tokenizer(ids, self.cfg)
        # TIGER's beam search walks the IDs' prefix trie; RPG scores the items it holds, which may have grown.
        self.trie = self.model.catalogue_trie(ids.codes, ids.codebook_size)
        if self.trie is not None:
            self.trie.to(self.device)
        self.model.set_catalogue(self.tokenizer.item_codes, self.cfg.eval)
        self.max_k = min(self.requested_max_k, self.num_items)
        self._index = {item: i for i, item in enumerate(ids.item_ids)}
        self.categories = _category_index(ids.item_ids, items)  # category name -> item indices

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, max_k: int = MAX_K) -> Recommender:
        """Load the best model of a ``tigerrec run`` directory (on CUDA when available), of either kind."""
        run_dir = Path(run_dir)
        for name in ("config.json", f"{IDS_DIR}/{IDS_FILE}", ITEMS_FILE, BEST_MODEL):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(
                    f"{run_dir / name} is missing; is {run_dir} a finished `tigerrec run` directory?"
                )
        device = check_device(device or default_device())
        cfg = read_run_config(run_dir)
        ids = load_ids(run_dir / IDS_DIR, cfg)
        items = read_items(run_dir / ITEMS_FILE)
        missing = [item for item in ids.item_ids if item not in items]
        if missing:
            log.warning("%d items have no metadata in %s (e.g. %s)", len(missing), ITEMS_FILE, missing[:3])
        trained = catalogue.trained_items(run_dir)
        vectors = load_item_vectors(run_dir / IDS_DIR, len(ids.item_ids))
        if vectors is None:
            log.warning(
                "%s has no %s/%s (made before runs stored item vectors): reserve_new ranks new items by the "
                "model's scores, not by the guided rule",
                run_dir,
                IDS_DIR,
                VECTORS_FILE,
            )
        model = load_best_model(make_model(make_tokenizer(ids, cfg), cfg).to(device), run_dir, cfg.train.members)
        model.configure_decoding(cfg.eval)
        log.info(
            "loaded %s: %s, %d items (%d new since training), %.2fM parameters, on %s",
            run_dir,
            model.kind,
            len(ids.item_ids),
            len(ids.item_ids) - (trained or len(ids.item_ids)),
            model.num_parameters() / 1e6,
            device,
        )
        return cls(model, ids, items, cfg, max_k, run_dir, trained, vectors, load_fusion(run_dir, cfg, device))

    def add_items(self, items: str | Path | dict[str, dict]) -> dict:
        """Add new items to the run directory (``catalogue.add_items``: an items table's path or {item id:
        metadata}) and recommend them from now on; returns the summary. The trained model is unchanged."""
        if self.run_dir is None:
            raise TigerrecError("add_items needs a Recommender loaded from a run directory")
        summary = catalogue.add_items(self.run_dir, items)
        ids, metadata = load_ids(self.run_dir / IDS_DIR, self.cfg), read_items(self.run_dir / ITEMS_FILE)
        vectors = load_item_vectors(self.run_dir / IDS_DIR, len(ids.item_ids))
        with self._lock.exclusive():
            self._set_catalogue(ids, metadata, summary["trained_items"], vectors)
        return summary

    @property
    def num_items(self) -> int:
        return len(self.ids.item_ids)

    @property
    def item_ids(self) -> list[str]:
        return self.ids.item_ids

    def __contains__(self, item_id) -> bool:
        return isinstance(item_id, str) and item_id in self._index

    def item(self, item_id: str) -> dict:
        """Metadata and Semantic ID of one item; UnknownItemError if the catalogue lacks it."""
        index = self._index.get(item_id) if isinstance(item_id, str) else None
        if index is None:
            raise UnknownItemError([item_id])
        return {"item_id": item_id, "semantic_id": self.ids.codes[index].tolist(), **self.items.get(item_id, {})}

    def recommend(
        self,
        history: list[str],
        user_id: str | None = None,
        k: int = 10,
        temperature: float | None = None,
        exclude_seen: bool = True,
        seed: int | None = None,
        exclude: list[str] | None = None,
        only: list[str] | None = None,
        category: str | None = None,
        max_new_share: float | None = None,
        reserve_new: bool = False,
    ) -> list[dict]:
        """The ``k`` most likely next items after ``history`` (item ids, oldest first).

        Only the most recent ``max_history`` items (the training setting, see
        ``self.max_history``) are fed to the model; ``exclude_seen`` still drops
        every item of the full history from the results. ``user_id`` selects the
        user's hashed token as in training; without it the request gets the reserved unknown-user
        token if the model trained one, else none; models without a user token ignore it.
        ``temperature`` samples the beams instead of keeping the most likely ones
        (more diverse results, in the order they were drawn; ``seed`` makes it
        repeatable; an RPG model samples items from the softmax of its scores).
        ``k`` is 1..``self.max_k``.

        Filters: ``exclude`` (item ids to leave out: in the basket, out of stock), ``only`` (an
        allow-list of item ids) and ``category`` (items with this category name anywhere in their
        categories, ``self.categories``). Fewer than ``k`` results come back only when fewer than
        ``k`` items pass the filters. ``max_new_share`` (0..1) caps the items added after training
        at ``ceil(max_new_share * k)`` of the results (the cold-start rule of the TIGER paper); the
        rest are the best trained-with items, all ordered by score. New items score below the
        trained-with ones (the model never had their code combinations as targets), so a cap alone
        admits few; ``reserve_new`` gives those ``ceil(max_new_share * k)`` slots to the best new
        items whatever their scores (BENCHMARKS.md, "Cold start").

        Returns dicts with item_id, score (log-probability), semantic_id, title, categories.
        """
        return self.run(
            [
                self.query(
                    history,
                    user_id,
                    k,
                    temperature,
                    exclude_seen,
                    seed,
                    exclude,
                    only,
                    category,
                    max_new_share,
                    reserve_new,
                )
            ]
        )[0]

    def recommend_batch(
        self,
        histories: list[list[str]],
        user_ids: list[str | None] | None = None,
        k: int = 10,
        temperature: float | None = None,
        exclude_seen: bool = True,
        seed: int | None = None,
        exclude: list[str] | None = None,
        only: list[str] | None = None,
        category: str | None = None,
        max_new_share: float | None = None,
        reserve_new: bool = False,
    ) -> list[list[dict]]:
        """``recommend`` for many histories at once (one model call per ``eval.batch_size`` rows); the
        filters apply to every history."""
        if not isinstance(histories, (list, tuple)) or not histories:
            raise RequestError("histories must be a non-empty list of item id lists")
        if user_ids is None:
            user_ids = [None] * len(histories)
        if not isinstance(user_ids, (list, tuple)) or len(user_ids) != len(histories):
            raise RequestError(f"user_ids must be None or a list of {len(histories)} user ids")
        queries = [
            self.query(
                h,
                u,
                k,
                temperature,
                exclude_seen,
                seed,
                exclude,
                only,
                category,
                max_new_share,
                reserve_new,
                where=f"history {n}",
            )
            for n, (h, u) in enumerate(zip(histories, user_ids))
        ]
        return self.run(queries)

    def query(
        self,
        history: list[str],
        user_id: str | None = None,
        k: int = 10,
        temperature: float | None = None,
        exclude_seen: bool = True,
        seed: int | None = None,
        exclude: list[str] | None = None,
        only: list[str] | None = None,
        category: str | None = None,
        max_new_share: float | None = None,
        reserve_new: bool = False,
        where: str = "history",
    ) -> Query:
        """Check a request and look its items up; raises RequestError or UnknownItemError naming the problem."""
        k, temperature = self._check_options(k, temperature, exclude_seen, seed)
        indices = self._item_indices(history, where)
        excluded = set(indices.tolist()) if exclude_seen else set()
        if exclude is not None:
            excluded.update(self._item_indices(exclude, "exclude", allow_empty=True).tolist())
        allowed = None if only is None else set(self._item_indices(only, "only").tolist())
        if category is not None:
            in_category = self._category_items(category)
            allowed = in_category if allowed is None else allowed & in_category
        # Filters are enforced inside decoding, so the evaluation beam (or k, if larger) always suffices.
        beam = min(max(k, self.cfg.eval.beam_size), self.num_items)
        if not isinstance(reserve_new, bool):
            raise RequestError(f"reserve_new must be true or false, got {reserve_new!r}")
        if reserve_new and max_new_share is None:
            raise RequestError("reserve_new needs max_new_share: the share of the top k to reserve for new items")
        new_cap = None
        if max_new_share is not None:
            if isinstance(max_new_share, bool) or not isinstance(max_new_share, Real) or not 0 <= max_new_share <= 1:
                raise RequestError(f"max_new_share must be a number in [0, 1], got {max_new_share!r}")
            cap = new_item_cap(max_new_share, k)
            # None: nothing to merge (no new items, or a cap that neither limits nor reserves)
            new_cap = cap if (cap < k or reserve_new) and self.trained_items < self.num_items else None
        return Query(
            indices,
            self._user_token(user_id),
            k,
            temperature,
            frozenset(excluded),
            seed,
            beam,
            None if allowed is None else frozenset(allowed),
            new_cap,
            reserve_new,
        )

    def run(self, queries: list[Query]) -> list[list[dict]]:
        """Results of checked queries; those with the same settings share model calls."""
        groups = defaultdict(list)
        for n, q in enumerate(queries):
            groups[q.beam, q.k, q.temperature, q.seed].append(n)
        results = [None] * len(queries)
        step = self.cfg.eval.batch_size
        for (beam, k, temperature, seed), members in groups.items():
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
            for begin in range(0, len(members), step):
                chunk = [queries[n] for n in members[begin : begin + step]]
                with self._lock.shared():  # one catalogue for the whole chunk, even while add_items swaps it
                    items, scores = self._rank(chunk, beam, temperature, generator)
                for row, n in enumerate(members[begin : begin + step]):
                    results[n] = self._results(items[row], scores[row], k)
        return results

    # ------------------------------------------------------------------ helpers

    def _rank(self, chunk: list[Query], beam: int, temperature, generator) -> tuple[np.ndarray, np.ndarray]:
        """Items and scores (B, beam) of each query, best first (-1: fewer items pass its filters).

        A query with a cap on new items ranks the trained-with items and the new ones apart, and the two
        lists merge by score with at most ``new_cap`` new items (exactly that many, as far as there are,
        with ``reserve_new``). The model ranks the new items by a second decode, or, for reserved slots in
        a run with item vectors, the guided rule does: their score is then their content similarity to
        the guided profile (``new_items.guided_rank``), guided by the model's own beam. A run with an item
        model (``fusion``) re-ranks the beam of each query's first decode."""
        examples = Examples.from_histories(
            [q.indices for q in chunk], np.full(len(chunk), -1), np.zeros(len(chunk)), self.max_history
        )  # keeps the most recent items
        tokens = self.tokenizer.encoder_input(
            torch.from_numpy(examples.histories), torch.tensor([q.user_token for q in chunk])
        )
        excluded = [np.fromiter(q.excluded, np.int64, len(q.excluded)) for q in chunk]
        only = [None if q.only is None else np.fromiter(q.only, np.int64, len(q.only)) for q in chunk]
        capped = [row for row, q in enumerate(chunk) if q.new_cap is not None]
        new = np.arange(self.trained_items, self.num_items)
        # Reserved slots go to the new items the guided rule ranks first (``new_items``) where the run has
        # item vectors; the other capped rows decode a second time, among the new items only.
        guided = [row for row in capped if chunk[row].reserve_new and self.item_vectors is not None]
        twice = [row for row in capped if row not in guided]
        new_filter = ItemFilter([excluded[row] for row in guided], [only[row] for row in guided])
        tokens = torch.cat([tokens, tokens[twice]])
        excluded += [excluded[row] for row in twice]
        only += [new if only[row] is None else np.intersect1d(only[row], new) for row in twice]
        for row in capped:  # the first decode of a capped row ranks the trained-with items only
            excluded[row] = np.concatenate([excluded[row], new])
        allowed = ItemFilter(excluded, only)
        with autocast(self.device, self.bf16):
            out = rank(
                self.model,
                tokens.to(self.device),
                beam,
                self.trie,
                beam,
                temperature=temperature,
                generator=generator,
                allowed=allowed,
            )
        items, scores = out.items.cpu().numpy(), out.scores.float().cpu().numpy()
        beam_items, beam_scores = items, scores  # the guided rule's guides: the model's own best, by probability
        if self.fusion is not None and temperature is None:  # a sample keeps the order it was drawn in
            rows = len(chunk)  # not the second decodes, among new items, of which the item model knows nothing
            items, scores = items.copy(), scores.copy()
            items[:rows], scores[:rows] = self.fusion.rerank(
                [q.indices for q in chunk], items[:rows], scores[:rows], beam, self.num_items, allowed.rows(range(rows))
            )
        if capped:
            extra = {row: (items[len(chunk) + i], scores[len(chunk) + i]) for i, row in enumerate(twice)}
            if guided:
                guides = self.cfg.eval.new_item_guides
                new_items, new_scores = guided_rank(
                    self.item_vectors,
                    [chunk[row].indices for row in guided],
                    beam_items[guided, :guides],
                    beam_scores[guided, :guides],
                    new,
                    new_filter,
                    self.cfg.eval.new_item_pull,
                    beam,
                    self.max_history,
                )
                extra.update({row: (new_items[i], new_scores[i]) for i, row in enumerate(guided)})
            k = min(chunk[0].k, items.shape[1])  # a chunk shares k (``run``); reserved slots must fall within it
            merged = merge_capped(
                items[capped],
                scores[capped],
                np.stack([extra[row][0] for row in capped]),
                np.stack([extra[row][1] for row in capped]),
                np.array([chunk[row].new_cap for row in capped]),
                k,
                np.array([chunk[row].reserve_new for row in capped]),
            )
            items[capped], scores[capped] = -1, -np.inf
            items[capped, :k], scores[capped, :k] = merged
        return items[: len(chunk)], scores[: len(chunk)]

    def _category_items(self, category) -> set[int]:
        if not isinstance(category, str):
            raise RequestError(f"category must be a string, got {category!r}")
        if category not in self.categories:
            raise RequestError(
                f"unknown category {category!r}; the catalogue has {len(self.categories)} "
                f"(e.g. {', '.join(repr(c) for c in list(self.categories)[:5])})"
            )
        return self.categories[category]

    def _results(self, items: np.ndarray, scores: np.ndarray, k: int) -> list[dict]:
        out = []
        for index, score in zip(items.tolist(), scores.tolist()):
            if index < 0:  # fewer items pass the filters than the beam holds
                continue
            item_id = self.ids.item_ids[index]
            meta = self.items.get(item_id, {})
            out.append(
                {
                    "item_id": item_id,
                    "score": score,
                    "semantic_id": self.ids.codes[index].tolist(),
                    "title": meta.get("title"),
                    "categories": meta.get("categories"),
                    "new": index >= self.trained_items,  # added after training (``add_items``)
                }
            )
            if len(out) == k:
                break
        return out

    def _check_options(self, k, temperature, exclude_seen, seed) -> tuple[int, float | None]:
        if not isinstance(k, Integral) or isinstance(k, bool):
            raise RequestError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= self.max_k:
            raise RequestError(f"k must be between 1 and {self.max_k}, got {k}")
        if temperature is not None:
            if not isinstance(temperature, Real) or isinstance(temperature, bool):
                raise RequestError(f"temperature must be a number or None, got {temperature!r}")
            if not (math.isfinite(temperature) and temperature > 0):
                raise RequestError(f"temperature must be a finite number > 0, got {temperature!r}")
            temperature = float(temperature)
        if not isinstance(exclude_seen, bool):
            raise RequestError(f"exclude_seen must be true or false, got {exclude_seen!r}")
        if seed is not None and (not isinstance(seed, Integral) or isinstance(seed, bool)):
            raise RequestError(f"seed must be an integer or None, got {seed!r}")
        if seed is not None and not 0 <= seed < 2**63:  # what a torch.Generator takes
            raise RequestError(f"seed must be in [0, 2**63), got {seed}")
        return int(k), temperature

    def _item_indices(self, history, where: str, allow_empty: bool = False) -> np.ndarray:
        """Catalogue indices of a list of item ids (strings, or integers for numeric ids)."""
        if not isinstance(history, (list, tuple)):
            raise RequestError(f"{where} must be a list of item ids, got {type(history).__name__}")
        if not history and not allow_empty:
            raise RequestError(f"{where} is empty; give at least one item id")
        indices, unknown = [], []
        for item in history:
            if isinstance(item, bool) or not isinstance(item, (str, Integral)):
                raise RequestError(f"{where}: item ids must be strings, got {item!r}")
            index = self._index.get(str(item))
            if index is None:
                unknown.append(str(item))
            indices.append(index)
        if unknown:
            raise UnknownItemError(list(dict.fromkeys(unknown)))
        return np.array(indices, dtype=np.int64)

    def _user_token(self, user) -> int:
        if user is None:  # the reserved anonymous token, or none (PAD is masked out)
            return self.tokenizer.user_token(None)
        if isinstance(user, bool) or not isinstance(user, (str, Integral)):
            raise RequestError(f"user ids must be strings, got {user!r}")
        try:
            return self.tokenizer.user_token(str(user))
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800"
            raise RequestError(f"user id {user!r} is not valid Unicode text") from None

    def __repr__(self) -> str:
        return f"Recommender({self.run_dir}, items={self.num_items}, device={self.device})"


def _category_index(item_ids: list[str], items: dict[str, dict]) -> dict[str, set[int]]:
    """Category name -> indices of the items with that name anywhere in their ``categories``
    (a name, a list of names, or Amazon's list of category paths)."""

    def names(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for part in value:
                yield from names(part)

    index: dict[str, set[int]] = defaultdict(set)
    for i, item_id in enumerate(item_ids):
        for name in names(items.get(item_id, {}).get("categories")):
            index[name].add(i)
    return dict(index)


MAX_QUEUE = 1024  # queries a MicroBatcher holds waiting by default: 16 batches of 64, ~20x what 50 clients keep waiting
# How long a batch waits for more queries after its first one (as TF Serving's and Triton's batchers do): clients
# answered together send their next queries within a few milliseconds, and without the wait the first of them
# decodes alone while the rest queue behind it. A model call costs tens of milliseconds even for one query.
GATHER_SECONDS = 0.003


class BatcherUnavailable(RuntimeError):
    """A MicroBatcher cannot take or answer a query now; asking again later may succeed."""


class BatcherClosed(BatcherUnavailable):
    """``submit`` after ``close()`` (a server swaps in a new batcher on reload: submit there)."""


class QueueFull(BatcherUnavailable):
    """``submit`` while ``max_queue`` queries wait."""


class WorkerStopped(BatcherUnavailable):
    """The worker thread died while running the query (the next ``submit`` starts a new one)."""


class SharedLock:
    """Held by many at once (``shared``) or by one alone (``exclusive``); a thread waiting for it alone
    goes before new sharers, so a steady stream of model calls cannot keep a catalogue swap waiting."""

    def __init__(self):
        self._cond = threading.Condition()
        self._sharers, self._exclusive, self._waiting = 0, False, 0

    @contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._sharers += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._sharers)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class MicroBatcher:
    """Runs queries submitted from many threads in shared model calls.

    A worker thread takes the next query, plus every query that arrives within ``gather_seconds``
    of it or arrived meanwhile (up to ``max_batch``), and runs them together: under load, requests
    queue while a batch decodes and go in the next one; an idle server adds at most ``gather_seconds``.
    ``workers`` threads do so side by side, each decoding its own batch (``device.decode_workers``).
    Seeded queries run alone, so a seed always gives the same results.

    At most ``max_queue`` queries wait (``submit`` raises QueueFull beyond). A batch whose
    model call raises is run again one query at a time, so only the queries at fault get
    the error. Cancelled futures (a caller that gave up) are skipped. ``alive`` says whether
    every worker thread runs; should one ever die, the next ``submit`` starts another.
    ``close()`` refuses new queries (BatcherClosed) and lets the workers answer those queued.
    """

    def __init__(
        self,
        recommender: Recommender,
        max_batch: int = 64,
        max_queue: int = MAX_QUEUE,
        gather_seconds: float = GATHER_SECONDS,
        workers: int = 1,
    ):
        if max_batch < 1 or max_queue < 1 or workers < 1:
            raise TigerrecError(
                f"max_batch, max_queue and workers must be at least 1, not {max_batch}, {max_queue} and {workers}"
            )
        self.recommender, self.max_batch, self.max_queue = recommender, max_batch, max_queue
        self.gather_seconds = gather_seconds
        self._jobs: deque[tuple[Query, Future]] = deque()
        self._cond = threading.Condition()  # guards _jobs, _closed and the worker threads
        self._closed = False
        keep_freed_memory()
        self._threads: list[threading.Thread] = [self._started() for _ in range(workers)]

    @property
    def alive(self) -> bool:
        """Whether every worker thread runs (False after ``close()`` once the queue is drained)."""
        return all(thread.is_alive() for thread in self._threads)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Queries waiting (not counting the batches being decoded)."""
        return len(self._jobs)

    def submit(self, query: Query) -> Future:
        future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"{len(self._jobs)} queries are waiting; retry later")
            self._restart_stopped()
            self._jobs.append((query, future))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = 10) -> None:
        """Refuse new queries; the workers answer every query already queued, then stop."""
        with self._cond:
            self._closed = True
            if self._jobs:
                self._restart_stopped()  # somebody has to answer them
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _started(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="tigerrec-batcher", daemon=True)
        thread.start()
        return thread

    def _restart_stopped(self) -> None:
        for n, thread in enumerate(self._threads):
            if not thread.is_alive():
                log.error("a batcher worker thread had stopped; starting a new one")
                self._threads[n] = self._started()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:  # closed and drained
                    return
                deadline = time.monotonic() + self.gather_seconds
                while len(self._jobs) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                jobs = [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]
            # A future the caller cancelled is skipped; the others can no longer be cancelled.
            jobs = [(q, f) for q, f in jobs if f.set_running_or_notify_cancel()]
            batches = [[j for j in jobs if j[0].seed is None]] + [[j] for j in jobs if j[0].seed is not None]
            for batch in filter(None, batches):
                try:
                    self._run(batch)
                except BaseException as e:  # the worker dies (SystemExit, ...): its callers must not wait forever
                    stopped = WorkerStopped(f"the batcher's worker stopped: {type(e).__name__}: {e}")
                    for _, future in jobs:
                        if not future.done():
                            future.set_exception(stopped)
                    raise

    def _run(self, batch: list[tuple[Query, Future]]) -> None:
        """Answer a batch; if its model call raises, answer its queries one by one."""
        try:
            results = self.recommender.run([q for q, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            log.warning("a batch of %d queries failed (%s); running them one by one", len(batch), e)
            for query, future in batch:
                try:
                    future.set_result(self.recommender.run([query])[0])
                except Exception as error:
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
