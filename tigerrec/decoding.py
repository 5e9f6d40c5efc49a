"""Generating Semantic IDs: batched beam search (or sampling), optionally constrained by a prefix trie.

The trie maps an ID prefix (a node) and a code to the node of the longer prefix, or,
at the last position, to the item; a code that leads to no item is masked, so every
generated ID is a real item. It is stored as sorted edges, so its memory follows the
catalogue (a million items take tens of MB). A request's filter (``ItemFilter``: the
items a row excludes, such as its history, or the only ones it allows) narrows the
trie for that row: a prefix stays open only while an allowed item lies under it, so
the beams never waste a slot on an item the request rules out, and the top k holds k
allowed items whenever k exist. Filters are item lists, never (rows x items) masks.

``rank`` is the one entry point for recommendations from any model kind (its ``rank``):
TIGER generates IDs here (``generate``), RPG scores every item exactly (``rpg.RPGModel.rank``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .sequences import BOS, code_offsets


class ItemFilter:
    """Which items each row's results may hold, kept as item lists rather than a (rows x items) mask, so
    it costs what the lists hold at any catalogue size: row r keeps ``only[r]`` (every item where that
    is None) less ``excluded[r]``. A request's filters and, with history exclusion, its history build it."""

    def __init__(self, excluded: list, only: list | None = None):
        self.excluded = [np.asarray(items, dtype=np.int64).ravel() for items in excluded]
        self.only = (
            [None if items is None else np.asarray(items, dtype=np.int64).ravel() for items in only]
            if (only is not None)
            else [None] * len(self.excluded)
        )
        if len(self.only) != len(self.excluded):
            raise ValueError(f"{len(self.excluded)} rows of excluded items but {len(self.only)} of allowed ones")

    @classmethod
    def from_mask(cls, mask) -> ItemFilter:
        """The rows of a (rows, items) bool mask (small catalogues, tests)."""
        mask = torch.as_tensor(mask).cpu().numpy()
        return cls([np.zeros(0, dtype=np.int64)] * len(mask), [np.flatnonzero(row) for row in mask])

    def __len__(self) -> int:
        return len(self.excluded)

    def rows(self, index) -> ItemFilter:
        return ItemFilter([self.excluded[i] for i in index], [self.only[i] for i in index])

    def __add__(self, other: ItemFilter) -> ItemFilter:
        return ItemFilter(self.excluded + other.excluded, self.only + other.only)

    def listed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, items) pairs, each once: a row's allowed items where it has ``only``, its excluded items
        elsewhere; and per row whether its pairs are the allowed items (True) or the excluded ones."""
        lists = [
            np.unique(excluded) if only is None else np.setdiff1d(only, excluded)
            for excluded, only in zip(self.excluded, self.only)
        ]
        rows = np.repeat(np.arange(len(lists)), [len(items) for items in lists])
        items = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        return rows, items.astype(np.int64), np.array([only is not None for only in self.only], dtype=bool)

    def mask(self, num_items: int, device=None) -> torch.Tensor:
        """(rows, num_items) bool, for a model kind that scores every item anyway."""
        rows, items, allow_listed = self.listed()
        mask = torch.from_numpy(np.repeat(~allow_listed[:, None], num_items, axis=1))
        mask[torch.from_numpy(rows), torch.from_numpy(items)] = torch.from_numpy(allow_listed[rows])
        return mask.to(device)


class PrefixTrie:
    """The catalogue's IDs as a prefix tree, stored sparsely: its edges sorted by (parent node, code), so
    memory grows with the number of edges (at most id_length per item), not with nodes x codebook_size.

    Node 0 is the root, then one node per distinct prefix of length 1..id_length-1, numbered depth by
    depth; the last code of an ID leads to the item itself (its index), not to a node."""

    def __init__(self, item_codes: np.ndarray, codebook_size: int):
        codes = np.asarray(item_codes, dtype=np.int64)
        n, length = codes.shape
        self.id_length, self.codebook_size, self.num_items = length, codebook_size, n
        parents, children = [np.zeros(n, dtype=np.int64)], []
        num_nodes = 1
        for depth in range(length - 1):
            _, child = np.unique(codes[:, : depth + 1], axis=0, return_inverse=True)
            child = child.ravel() + num_nodes
            num_nodes = int(child.max()) + 1
            children.append(child)
            parents.append(child)
        children.append(np.arange(n))  # the last code leads to the item itself
        prefixes = np.stack(parents, axis=1)  # (n, length): each item's prefix nodes, root first
        keys = (prefixes * codebook_size + codes).ravel(order="F")  # one (parent, code) key per item and depth
        unique_keys, first = np.unique(keys, return_index=True)
        if (first >= n * (length - 1)).sum() != n:  # last-depth edges: one per item unless two items share an ID
            raise ValueError("item Semantic IDs are not unique; the trie needs one item per ID")
        edge_parent = unique_keys // codebook_size
        self.num_nodes = num_nodes
        # CSR: the edges of node v are edge_code[offsets[v]:offsets[v + 1]], leading to edge_child[...].
        self.offsets = torch.from_numpy(np.searchsorted(edge_parent, np.arange(num_nodes + 1)))
        self.edge_code = torch.from_numpy(unique_keys % codebook_size)
        self.edge_child = torch.from_numpy(np.concatenate(children)[first])
        # Host-side tables for building filters: each item's prefix nodes and codes, and each node's item count.
        self.item_prefixes = prefixes.astype(np.int32)
        self.item_codes = codes.astype(np.int32)
        self.node_size = np.bincount(prefixes.ravel(), minlength=num_nodes).astype(np.int64)
        self.log_mass: tuple[torch.Tensor, torch.Tensor] | None = None  # see penalize_popularity

    def to(self, device) -> PrefixTrie:
        self.offsets, self.edge_code, self.edge_child = (
            t.to(device) for t in (self.offsets, self.edge_code, self.edge_child)
        )
        if self.log_mass is not None:
            self.log_mass = tuple(t.to(device) for t in self.log_mass)
        return self

    def nbytes(self) -> int:
        """Memory of the trie's tables."""
        tensors = [self.offsets, self.edge_code, self.edge_child, *(self.log_mass or ())]
        arrays = [self.item_prefixes, self.item_codes, self.node_size]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays)

    def children(self, nodes: torch.Tensor) -> torch.Tensor:
        """(*nodes.shape, codebook_size): the node (at the last position, the item) that each code leads
        to from ``nodes``; -1 where it leads to no item, and everywhere from a dead node (-1)."""
        flat = nodes.flatten()
        alive = flat >= 0
        start = self.offsets[flat.clamp(min=0)]
        count = torch.where(alive, self.offsets[flat.clamp(min=0) + 1] - start, 0)
        row = torch.repeat_interleave(torch.arange(len(flat), device=flat.device), count)
        # Position of each listed edge: its node's first edge plus its rank among that node's edges.
        before = torch.cumsum(count, 0) - count
        edge = torch.arange(len(row), device=flat.device) - (before - start).repeat_interleave(count)
        out = torch.full((len(flat), self.codebook_size), -1, dtype=torch.long, device=flat.device)
        out[row, self.edge_code[edge]] = self.edge_child[edge]
        return out.view(*nodes.shape, self.codebook_size)

    def penalize_popularity(self, counts: np.ndarray, weight: float) -> PrefixTrie:
        """Rank items by log p(item) - ``weight`` * log(1 + count): a logit adjustment against the
        training popularity ``counts`` (one per item), so rarely seen items rank higher.

        Applied at every step of the beam search, not only to finished IDs: a prefix's mass is the sum
        of its items' (1 + count), and each step subtracts ``weight`` times the log-ratio of the child's
        mass to its parent's. The steps telescope to the item's own penalty (plus a constant), and the
        beams already lean towards prefixes of rarely seen items. ``weight`` 0 removes it."""
        if weight == 0:
            self.log_mass = None
            return self
        mass = np.asarray(counts, dtype=np.float64) + 1.0
        if mass.shape != (self.num_items,):
            raise ValueError(f"counts hold {mass.shape[0]} items, the trie {self.num_items}")
        node_mass = np.bincount(self.item_prefixes.ravel(), np.repeat(mass, self.id_length), self.num_nodes)
        device = self.offsets.device
        self.log_mass = (
            torch.from_numpy(weight * np.log(node_mass)).float().to(device),
            torch.from_numpy(weight * np.log(mass)).float().to(device),
        )
        return self

    def popularity_step(self, nodes: torch.Tensor, children: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, beams, codebook_size): what ``penalize_popularity`` adds to each code's log-probability
        after the prefixes ``nodes`` (B, beams) with their ``children``; ``last`` when those are items."""
        node_log, item_log = self.log_mass
        return node_log[nodes.clamp(min=0)][..., None] - (item_log if last else node_log)[children.clamp(min=0)]

    def restrict(self, item_filter: ItemFilter) -> TrieFilter:
        """The codes ``item_filter`` opens or closes at each depth, for ``TrieFilter.apply``."""
        return TrieFilter(self, item_filter)


class TrieFilter:
    """An ``ItemFilter`` on the trie, as (row, prefix, code) triples per depth, never (rows x items) masks.

    Where a row lists its allowed items, a code stays open only if it leads towards one of them; where a
    row lists excluded items, a code closes once every item under it is excluded. Either way the triples
    come from the listed items alone, and a beam never spends a slot on a prefix with nothing left."""

    def __init__(self, trie: PrefixTrie, item_filter: ItemFilter):
        rows, items, allow_listed = item_filter.listed()
        self.allow_listed = torch.from_numpy(allow_listed)
        self.stride = trie.num_nodes + 1  # key of (row, node): row * stride + node + 1; a dead node gives row * stride
        self.steps = []
        for depth in range(trie.id_length):
            last = depth == trie.id_length - 1
            child = items if last else trie.item_prefixes[items, depth + 1].astype(np.int64)
            size = np.ones(len(items), dtype=np.int64) if last else trie.node_size[child]
            # One entry per (row, child): listed-allowed children stay open; excluded ones close when full.
            pair = rows * (max(trie.num_nodes, trie.num_items) + 1) + child
            _, first, count = np.unique(pair, return_index=True, return_counts=True)
            keep = allow_listed[rows[first]] | (count == size[first])
            chosen = first[keep]
            keys = rows[chosen] * self.stride + trie.item_prefixes[items[chosen], depth].astype(np.int64) + 1
            order = np.argsort(keys, kind="stable")
            code = trie.item_codes[items[chosen], depth].astype(np.int64)
            self.steps.append((torch.from_numpy(keys[order]), torch.from_numpy(code[order])))

    def to(self, device) -> TrieFilter:
        self.allow_listed = self.allow_listed.to(device)
        self.steps = [(keys.to(device), codes.to(device)) for keys, codes in self.steps]
        return self

    def apply(self, valid: torch.Tensor, nodes: torch.Tensor, depth: int) -> torch.Tensor:
        """``valid`` (B, beams, codebook_size) less the codes this filter rules out after ``nodes`` (B, beams)."""
        keys, codes = self.steps[depth]
        batch, beams, size = valid.shape
        beam_keys = (torch.arange(batch, device=nodes.device)[:, None] * self.stride + nodes + 1).flatten()
        sorted_keys, order = beam_keys.sort()  # live beams of a row hold distinct prefixes
        position = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
        hit = sorted_keys[position] == keys
        listed = torch.zeros(batch * beams, size, dtype=torch.bool, device=valid.device)
        listed[order[position[hit]], codes[hit]] = True
        return valid & (listed.view(batch, beams, size) == self.allow_listed[:, None, None])


def take_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` along its first axis, as one copy of contiguous rows: on a CPU several times
    faster than advanced indexing of a 4-d tensor, and the beam search copies its caches every step."""
    return tensor.reshape(len(tensor), -1).index_select(0, rows).view(len(rows), *tensor.shape[1:])


@dataclass
class Generated:
    items: torch.Tensor  # (B, k) item indices, -1 = the ID matches no item (unconstrained only)
    codes: torch.Tensor  # (B, k, id_length)
    scores: torch.Tensor  # (B, k) sequence log-probabilities


@torch.no_grad()
def rank(
    model,
    tokens: torch.Tensor,
    k: int,
    trie: PrefixTrie | None = None,
    beam_size: int | None = None,
    constrained: bool = True,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    allowed: ItemFilter | None = None,
) -> Generated:
    """The ``k`` best items after each row of encoder ``tokens``, best first, from a model of any kind.

    TIGER generates IDs by beam search with ``beam_size`` beams (default ``k``), constrained to the
    catalogue by ``trie`` unless ``constrained`` is False. RPG scores every item of its catalogue
    exactly, or with graph decoding keeps ``beam_size`` items per step; ``trie`` and ``constrained``
    do not apply to it. With ``temperature`` both sample instead of taking the most likely, and results
    come in the order drawn. ``allowed`` (an ``ItemFilter`` of B rows) restricts each row's results to the items
    it keeps (a request's filters); rows with fewer than ``k`` such items end in items -1 with score -inf.
    """
    return model.rank(tokens, k, trie, beam_size, constrained, temperature, generator, allowed)


def new_item_cap(share: float, k: int) -> int:
    """How many new (unseen) items a top ``k`` admits under the paper's cold-start rule: ceil(share * k),
    so any share > 0 admits one even at k = 1 (the tolerance keeps 0.1 * 10 at 1, not 2)."""
    return math.ceil(share * k - 1e-9)


def merge_capped(
    items: np.ndarray,
    scores: np.ndarray,
    extra_items: np.ndarray,
    extra_scores: np.ndarray,
    cap: int | np.ndarray,
    k: int,
    reserve: bool | np.ndarray = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two ranked lists per row (N, *) by score, with at most ``cap`` (an int, or one
    per row) taken from the second, the best of it first. Items -1 are no items; rows short of ``k``
    end in -1 with score -inf. Used to admit new items into a ranking under a cap (cold start).

    ``reserve`` (a bool, or one per row): the best ``cap`` of the second list always enter (as many
    as it has), and the rest of the ``k`` are the best of the first; the result is still ordered by
    score. New items score below the ones a model was trained on (their code combinations were never
    targets), so a cap alone rarely lets any in; reserved slots give them a fixed share of the list."""
    cap = np.broadcast_to(np.asarray(cap), (len(items),))
    reserve = np.broadcast_to(np.asarray(reserve), (len(items),))
    taken = np.arange(extra_items.shape[1]) < cap[:, None]
    extra_scores = np.where(taken & (extra_items >= 0), extra_scores, -np.inf)
    pool_items = np.concatenate([items, extra_items], axis=1)
    pool_scores = np.where(pool_items >= 0, np.concatenate([scores, extra_scores], axis=1), -np.inf)
    # Selection key: with reserved slots the capped new items come before every other item.
    reserved = np.where(reserve[:, None] & np.isfinite(extra_scores), np.inf, extra_scores)
    key = np.concatenate([pool_scores[:, : items.shape[1]], reserved], axis=1)
    chosen = np.argsort(-key, axis=1, kind="stable")[:, :k]
    order = np.take_along_axis(
        chosen, np.argsort(-np.take_along_axis(pool_scores, chosen, 1), axis=1, kind="stable"), 1
    )
    best_items, best_scores = np.take_along_axis(pool_items, order, 1), np.take_along_axis(pool_scores, order, 1)
    best_items = np.where(np.isfinite(best_scores), best_items, -1)
    if best_items.shape[1] < k:
        pad = ((0, 0), (0, k - best_items.shape[1]))
        best_items, best_scores = (
            np.pad(best_items, pad, constant_values=-1),
            np.pad(best_scores, pad, constant_values=-np.inf),
        )
    return best_items, best_scores


@torch.no_grad()
def generate(
    model,
    tokens: torch.Tensor,
    trie: PrefixTrie,
    beam_size: int = 20,
    top_k: int = 10,
    constrained: bool = True,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    allowed: ItemFilter | None = None,
) -> Generated:
    """Top-k Semantic IDs for each input row (of the items ``allowed`` keeps for it, when given), from a
    model with TIGER's ``encode``, ``memory_rows`` and ``decode`` (``model.TigerModel``, ``model.TigerEnsemble``).

    An item's score is the log-probability of its ID, the last code renormalised over the last codes of
    the catalogue's items with its prefix. That code only tells apart the items of one prefix (the
    collision suffix), and most prefixes hold one item: its ID scores as its prefix, and its beam skips
    the last decoder pass.

    With ``temperature`` set, each beam keeps its continuation by sampling from
    the tempered distribution instead of taking the most likely ones (diverse
    recommendations); ``temperature=None`` is plain beam search.
    """
    if top_k > beam_size:
        raise ValueError(f"top_k ({top_k}) cannot exceed beam_size ({beam_size})")
    batch = tokens.shape[0]
    device = tokens.device
    memory_kv, memory_mask = model.encode(tokens)
    length, size = model.id_length, model.codebook_size

    beams = 1  # beams per row; grows to beam_size after the first step
    codes = torch.empty(batch, 1, 0, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    sample_keys = torch.zeros(batch, 1, device=device)  # tempered log-probabilities (sampling only)
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    offsets = code_offsets(length, size, device)
    cache: list = []  # decoder self-attention keys/values, one row per (input, beam) of the previous step
    cache_rows = None  # the cache row each beam continues from (None: its own row)
    last = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    restriction = trie.restrict(allowed).to(device) if allowed is not None else None
    for position in range(length):
        final = position == length - 1
        children = trie.children(nodes)  # (batch, beams, size): where each code leads; -1 nowhere
        if constrained:
            valid = children >= 0
            if restriction is not None:
                valid = restriction.apply(valid, nodes, position)
        if constrained and final:
            # The last code is scored among the catalogue's items under its prefix (not the row's filter,
            # so a score never depends on the request): most prefixes hold one item, whose last code
            # then costs nothing and needs no decoder pass.
            open_codes = (children >= 0).flatten(0, 1)
            ask = (open_codes.sum(-1) > 1).nonzero().flatten()
            logits = torch.zeros(batch * beams, size, device=device)
            if len(ask):
                kv, mask = model.memory_rows(memory_kv, memory_mask, ask // beams)
                ask_rows = ask if cache_rows is None else cache_rows[ask]
                rows_cache = [(take_rows(k, ask_rows), take_rows(v, ask_rows)) for k, v in cache]
                logits[ask] = model.decode(last[ask], kv, mask, rows_cache)[:, -1].float()
            logits = logits.masked_fill(~open_codes, float("-inf")).view(batch, beams, size)
            # A dead beam (fewer items than beams) has no code open and would give NaN: keep it at -inf.
            log_probs = logits.log_softmax(-1).nan_to_num(nan=float("-inf"))
        else:
            if cache_rows is not None:
                cache[:] = [(take_rows(k, cache_rows), take_rows(v, cache_rows)) for k, v in cache]
            logits = model.decode(last, memory_kv, memory_mask, cache)[:, -1].float().view(batch, beams, size)
            log_probs = logits.log_softmax(-1)
        if constrained:
            if trie.log_mass is not None:
                log_probs = log_probs + trie.popularity_step(nodes, children, final)
            log_probs = log_probs.masked_fill(~valid, float("-inf"))
            children = children.masked_fill(~valid, -1)
        total = (scores[..., None] + log_probs).flatten(1)  # (batch, beams * size)
        keep = min(beam_size, total.shape[1])
        if temperature is None:
            scores, chosen = total.topk(keep, dim=1)
        else:
            # Sample continuations without replacement from the tempered distribution over the
            # allowed codes (Gumbel top-k); scores stay the model's own log-probabilities.
            # Normalising over allowed codes only makes temperature -> 0 the greedy path.
            tempered = logits / max(temperature, 1e-6)
            if constrained:
                tempered = tempered.masked_fill(~valid, float("-inf"))
            # A beam with no allowed code (fewer items than beams) would give NaN: keep it at -inf.
            tempered = tempered.log_softmax(-1).nan_to_num(nan=float("-inf"), neginf=float("-inf"))
            keys = (sample_keys[..., None] + tempered).flatten(1)
            uniform = torch.rand(keys.shape, device=device, generator=generator).clamp(1e-10, 1.0)
            perturbed, chosen = (keys - torch.log(-torch.log(uniform))).topk(keep, dim=1)
            sample_keys, scores = keys.gather(1, chosen), total.gather(1, chosen)
        parent, code = chosen // size, chosen % size
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, position)), code[..., None]], dim=2)
        nodes = children.flatten(1).gather(1, chosen)
        # Each surviving beam continues from its parent's cache; the copy waits for the next step, which at
        # the last code takes only the rows it decodes.
        cache_rows = (torch.arange(batch, device=device)[:, None] * beams + parent).flatten()
        last = (code + offsets[position]).flatten()[:, None]
        beams = keep
    # Beam search keeps beams sorted by score; sampled beams come in the order they were drawn.
    order = torch.arange(top_k, device=device).expand(batch, -1)
    items, scores = nodes.gather(1, order), scores.gather(1, order)
    # Paths through -inf (no valid continuation, only with fewer items than beams) are not results.
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    return Generated(items, codes.gather(1, order[..., None].expand(-1, -1, length)), scores)
