"""Generating Semantic IDs: batched beam search (or sampling), optionally constrained by a prefix trie.

The trie is a dense table ``next[node, code]``: for an ID prefix (a node) and a
code it gives the node of the longer prefix, or, at the last position, the item
index; -1 marks a code that leads to no item. Constrained decoding masks those
codes, so every generated ID is a real item. A request's filter (``allowed``: a
bool per row and item) narrows the trie for that row: a prefix stays open only
while an allowed item lies under it, so the beams never waste a slot on an item
the request rules out, and the top k holds k allowed items whenever k exist.

``rank`` is the one entry point for recommendations from any model kind (its ``rank``):
TIGER generates IDs here (``generate``), RPG scores every item exactly (``rpg.RPGModel.rank``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .sequences import BOS, code_offsets


class PrefixTrie:
    def __init__(self, item_codes: np.ndarray, codebook_size: int):
        codes = np.asarray(item_codes, dtype=np.int64)
        n, length = codes.shape
        self.id_length, self.codebook_size = length, codebook_size
        # Node ids: 0 = root, then one per distinct prefix of length 1..length-1.
        parent = np.zeros(n, dtype=np.int64)
        num_nodes, steps, prefixes = 1, [], []
        for depth in range(length):
            if depth < length - 1:
                _, child = np.unique(codes[:, : depth + 1], axis=0, return_inverse=True)
                child = child.ravel() + num_nodes
                num_nodes = int(child.max()) + 1
            else:
                child = np.arange(n)  # the last code leads to the item itself
            steps.append((parent, codes[:, depth], child))
            prefixes.append(parent)
            parent = child
        table = np.full((num_nodes, codebook_size), -1, dtype=np.int64)
        for parent, code, child in steps:
            table[parent, code] = child
        if len(np.unique(codes, axis=0)) != n:
            raise ValueError("item Semantic IDs are not unique; the trie needs one item per ID")
        self.table = torch.from_numpy(table)
        self.num_nodes = num_nodes
        self.item_prefixes = torch.from_numpy(
            np.stack(prefixes, axis=1)
        )  # (n, length): each item's prefix nodes, root first
        self.log_mass: tuple[torch.Tensor, torch.Tensor] | None = None  # see penalize_popularity

    def to(self, device) -> PrefixTrie:
        self.table, self.item_prefixes = self.table.to(device), self.item_prefixes.to(device)
        if self.log_mass is not None:
            self.log_mass = tuple(t.to(device) for t in self.log_mass)
        return self

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
        mass = torch.as_tensor(np.asarray(counts), dtype=torch.float64) + 1.0
        if mass.shape != (len(self.item_prefixes),):
            raise ValueError(f"counts hold {mass.shape[0]} items, the trie {len(self.item_prefixes)}")
        node_mass = torch.zeros(self.num_nodes, dtype=torch.float64, device=self.table.device)
        node_mass.index_add_(
            0, self.item_prefixes.flatten(), mass.to(node_mass.device).repeat_interleave(self.id_length)
        )
        self.log_mass = (weight * node_mass.log()).float(), (weight * mass.log()).float().to(node_mass.device)
        return self

    def popularity_step(self, nodes: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, beams, codebook_size): what ``penalize_popularity`` adds to each code's log-probability
        after the prefixes ``nodes`` (B, beams); ``last`` when the children are items."""
        node_log, item_log = self.log_mass
        parents = nodes.clamp(min=0)
        children = self.table[parents].clamp(min=0)  # dead codes are masked by the caller
        return node_log[parents][..., None] - (item_log if last else node_log)[children]

    def open_prefixes(self, allowed: torch.Tensor) -> torch.Tensor:
        """(B, num_nodes) bool: the prefixes with at least one item that ``allowed`` (B, n) keeps."""
        rows, n = allowed.shape
        open_ = torch.zeros(rows, self.num_nodes, dtype=torch.long, device=allowed.device)
        index = self.item_prefixes.T.reshape(1, -1).expand(rows, -1)  # depth-major: all items' nodes at depth 0, 1, ...
        open_.scatter_add_(1, index, allowed.long().repeat(1, self.id_length))
        return open_ > 0

    def step(self, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Follow ``codes`` from ``nodes``; -1 (dead) stays -1."""
        alive = nodes >= 0
        nxt = self.table[nodes.clamp(min=0), codes]
        return torch.where(alive, nxt, torch.full_like(nxt, -1))

    def allowed(self, nodes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, beams, codebook_size) bool: the codes that continue the prefixes ``nodes`` (B, beams) to an item.

        With ``keep`` (B, num_nodes) from ``open_prefixes``, or (B, n) at the last position (children are
        items there), only to the prefixes and items it keeps for that row."""
        children = self.table[nodes.clamp(min=0)]
        ok = (children >= 0) & (nodes >= 0)[..., None]
        if keep is not None:
            ok &= keep.gather(1, children.clamp(min=0).flatten(1)).view(children.shape)
        return ok


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
    allowed: torch.Tensor | None = None,
) -> Generated:
    """The ``k`` best items after each row of encoder ``tokens``, best first, from a model of any kind.

    TIGER generates IDs by beam search with ``beam_size`` beams (default ``k``), constrained to the
    catalogue by ``trie`` unless ``constrained`` is False. RPG scores every item of its catalogue
    exactly, or with graph decoding keeps ``beam_size`` items per step; ``trie`` and ``constrained``
    do not apply to it. With ``temperature`` both sample instead of taking the most likely, and results
    come in the order drawn. ``allowed`` (B, num_items) bool restricts each row's results to the items
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
    allowed: torch.Tensor | None = None,
) -> Generated:
    """Top-k Semantic IDs for each input row (of the items ``allowed`` keeps for it, when given), from a
    model with TIGER's ``encode`` and ``decode`` (``model.TigerModel``, ``model.TigerEnsemble``).

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
    cache: list = []  # decoder self-attention keys/values, one row per (input, beam)
    last = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    open_prefixes = trie.open_prefixes(allowed) if allowed is not None else None
    for position in range(length):
        logits = model.decode(last, memory_kv, memory_mask, cache)[:, -1].float()
        logits = logits.view(batch, beams, size)
        log_probs = logits.log_softmax(-1)
        if constrained:
            valid = trie.allowed(nodes, open_prefixes if position < length - 1 else allowed)
            if trie.log_mass is not None:
                log_probs = log_probs + trie.popularity_step(nodes, position == length - 1)
            log_probs = log_probs.masked_fill(~valid, float("-inf"))
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
        nodes = trie.step(nodes.gather(1, parent), code)
        # Each surviving beam continues from its parent's cache.
        rows = (torch.arange(batch, device=device)[:, None] * beams + parent).flatten()
        cache[:] = [(k[rows], v[rows]) for k, v in cache]
        last = (code + offsets[position]).flatten()[:, None]
        beams = keep
    # Beam search keeps beams sorted by score; sampled beams come in the order they were drawn.
    order = torch.arange(top_k, device=device).expand(batch, -1)
    items, scores = nodes.gather(1, order), scores.gather(1, order)
    # Paths through -inf (no valid continuation, only with fewer items than beams) are not results.
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    return Generated(items, codes.gather(1, order[..., None].expand(-1, -1, length)), scores)
