"""Recall@K and NDCG@K over all users and the full catalogue (a hit is the exact item)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy.stats import bootstrap
from tqdm.auto import tqdm

from .decoding import ItemFilter, PrefixTrie, rank
from .device import autocast, decode_workers, keep_freed_memory, torch_threads
from .io import atomic_path
from .model import SequenceModel
from .sequences import Examples, Tokenizer

log = logging.getLogger(__name__)

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")  # the paper's Table 1 columns, in its order


# The two ways a test is scored: with the user's own history items ranked like any other (the TIGER
# paper's protocol) or kept out of every ranking (RecTools' and the eSASRec benchmark's).
PROTOCOLS = {"history_ranked": False, "history_excluded": True}  # name -> exclude_history


def protocol_name(exclude_history: bool) -> str:
    return "history_excluded" if exclude_history else "history_ranked"


MISS = -1  # target_ranks' entry for a target outside the top k


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) the 0-based position of each target in its row of ``ranked`` (N, k), or ``MISS``.

    Every per-user metric follows from these ranks, so a run can keep them (a few bytes a user) and
    later compare itself with another model user by user (``paired_bootstrap_ci``)."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} targets")
    hits = ranked == np.asarray(targets)[:, None]
    return np.where(hits.any(1), hits.argmax(1), MISS).astype(np.int32)


def per_user_metrics(ranks: np.ndarray, ks=(5, 10)) -> dict[str, np.ndarray]:
    """Recall@k (0 or 1) and NDCG@k of each user, from ``target_ranks``."""
    found = ranks != MISS
    metrics = {}
    for k in ks:
        hit = found & (ranks < k)
        metrics[f"recall@{k}"] = hit.astype(np.float64)
        metrics[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0)
    return metrics


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray, ks=(5, 10)) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over all users. ranked: (N, >=max(ks)) item indices best first
    (-1 = no item); targets: (N,). A target that is not ranked (e.g. one the user has already seen,
    with history items excluded) counts as a miss: no user is dropped."""
    for k in ks:
        if ranked.shape[1] < k:
            raise ValueError(f"need at least {k} recommendations per user, got {ranked.shape[1]}")
    return mean_metrics(target_ranks(ranked, targets), ks)


def mean_metrics(ranks: np.ndarray, ks=(5, 10)) -> dict[str, float]:
    """``per_user_metrics`` averaged over all users."""
    return {name: float(values.mean()) for name, values in per_user_metrics(ranks, ks).items()}


def save_target_ranks(path: str | Path, ranks: dict[str, np.ndarray]) -> None:
    """``target_ranks`` by name (e.g. per protocol) as one .npz, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **ranks)


def load_target_ranks(path: str | Path) -> dict[str, np.ndarray] | None:
    """What ``save_target_ranks`` wrote, or None when there is no such file (plain arrays only: no pickles)."""
    if not Path(path).exists():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def paired_bootstrap_ci(
    ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str, resamples: int = 2000, seed: int = 0
) -> list[float]:
    """95% percentile bootstrap interval of mean(metric of A) - mean(metric of B) over users.

    Paired: ``ranks_a`` and ``ranks_b`` are ``target_ranks`` of two models on the same users and the
    same targets, so each resample draws users, not models' results, and the users' shared
    difficulty cancels out."""
    if len(ranks_a) != len(ranks_b):
        raise ValueError(f"a paired interval needs the same users: {len(ranks_a)} against {len(ranks_b)}")
    k = int(metric.split("@")[1])
    difference = per_user_metrics(ranks_a, (k,))[metric] - per_user_metrics(ranks_b, (k,))[metric]
    result = bootstrap(
        (difference,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile", random_state=seed
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


# Targets grouped by how often their item occurs in the training sequences: the tail (0-4), the
# middle (5-19) and the head (20+). Later targets tend to be rarer items, so a drop from validation
# to test is worth reading group by group (docs/studies/2026-12-07-sasrec.md, "Why ...").
POPULARITY_EDGES = (5, 20)


def item_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """(num_items,) occurrences of each item in ``sequences``."""
    return (
        np.bincount(np.concatenate(sequences), minlength=num_items)
        if sequences
        else np.zeros(num_items, dtype=np.int64)
    )


def metrics_by_popularity(
    ranked: np.ndarray, targets: np.ndarray, counts: np.ndarray, edges: tuple[int, ...] = POPULARITY_EDGES
) -> dict[str, dict]:
    """``ranking_metrics`` of each popularity group of the targets ("0-4", "5-19", "20+" for the
    default edges), with its number of users; ``counts`` is ``item_counts`` of the training sequences."""
    group = np.searchsorted(edges, counts[targets], side="right")
    names = [f"{low}-{high - 1}" for low, high in zip((0, *edges), edges)] + [f"{edges[-1]}+"]
    groups = {}
    for g, name in enumerate(names):
        members = group == g
        if members.any():  # an empty group has no metrics: it is left out
            groups[name] = {**ranking_metrics(ranked[members], targets[members]), "users": int(members.sum())}
    return groups


@torch.no_grad()
def recommend_examples(
    model: SequenceModel,
    tokenizer: Tokenizer,
    trie: PrefixTrie | None,
    examples: Examples,
    user_tokens: np.ndarray,
    beam_size: int,
    top_k: int,
    batch_size: int = 512,
    constrained: bool = True,
    bf16: bool = False,
    desc: str = "decode",
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    allowed: np.ndarray | None = None,
    exclude_history: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k item indices (N, top_k), their ID codes (N, top_k, L) and scores (N, top_k) for every
    example, in batches of similar length, decoded side by side on a CPU's cores (``device.decode_workers``;
    one at a time when sampling from a seeded ``generator``, so the draws stay reproducible).

    By either model kind (``decoding.rank``): TIGER's beam search over ``trie`` with ``beam_size``
    beams, or RPG's exact scores of every item (no trie: None). ``temperature`` samples instead.
    ``allowed`` (num_items,) bool keeps every example's results to those items; ``exclude_history``
    also keeps each example's own history items out of its results (the items its model input holds).
    """
    model.eval()
    device = next(model.parameters()).device
    if trie is not None:
        trie.to(device)  # the trie's table must sit where the decoder's nodes are
    order = np.argsort(examples.lengths, kind="stable")
    items = np.full((len(examples), top_k), -1, dtype=np.int64)
    codes = np.zeros((len(examples), top_k, tokenizer.id_length), dtype=np.int64)
    scores = np.full((len(examples), top_k), -np.inf, dtype=np.float32)
    only = None if allowed is None else np.flatnonzero(allowed)

    def decode(index: np.ndarray) -> None:  # writes rows no other batch writes
        tokens = tokenizer.encoder_input(
            torch.from_numpy(examples.histories[index]), torch.from_numpy(user_tokens[index])
        )
        keep = None
        if exclude_history or only is not None:
            seen = examples.seen_items(index) if exclude_history else [np.zeros(0, dtype=np.int64)] * len(index)
            keep = ItemFilter(seen, [only] * len(index))
        with autocast(str(device), bf16):  # autocast and no_grad hold per thread
            out = rank(model, tokens.to(device), top_k, trie, beam_size, constrained, temperature, generator, keep)
        items[index] = out.items.cpu().numpy()
        codes[index] = out.codes.cpu().numpy()
        scores[index] = out.scores.float().cpu().numpy()

    batches = [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]
    workers, threads = (1, torch.get_num_threads()) if generator is not None else decode_workers(str(device))
    workers = min(workers, len(batches)) or 1
    keep_freed_memory()
    with torch_threads(threads), ThreadPoolExecutor(workers, thread_name_prefix="tigerrec-decode") as pool:
        done = pool.map(decode, batches)
        for _ in tqdm(done, total=len(batches), desc=desc, unit="batch", leave=False, mininterval=2):
            pass
    return items, codes, scores


def ranked_examples(
    model,
    tokenizer,
    trie,
    examples: Examples,
    user_tokens: np.ndarray,
    beam_size: int,
    top_k: int,
    batch_size: int,
    bf16: bool,
    desc: str,
    exclude_history: bool,
    constrained: bool = True,
    fusion=None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, top_k) items of ``examples`` as evaluation ranks them: the model's top-k (``recommend_examples``),
    or with a ``fusion.Fusion`` its whole beam re-ranked, each user's whole history read by the item model
    and, with ``exclude_history``, kept out. The second array is the generative model's own top-k when the
    first is fused, else None."""
    ranked, _, scores = recommend_examples(
        model,
        tokenizer,
        trie,
        examples,
        user_tokens,
        beam_size,
        top_k if fusion is None else beam_size,
        batch_size,
        constrained,
        bf16,
        desc,
        exclude_history=exclude_history,
    )
    if fusion is None:
        return ranked, None
    histories = examples.seen_items(np.arange(len(examples)))
    allowed = ItemFilter(histories) if exclude_history else None
    fused, _ = fusion.rerank(histories, ranked, scores, top_k, tokenizer.num_items, allowed)
    return fused, ranked[:, :top_k]


def evaluate(
    model,
    tokenizer,
    trie,
    examples,
    user_tokens,
    beam_size=20,
    top_k=10,
    batch_size=512,
    bf16=False,
    constrained=True,
    desc="eval",
    exclude_history=False,
    counts: np.ndarray | None = None,
    fusion=None,
) -> dict:
    """``ranking_metrics`` of the model's top-k for ``examples``; given the training ``counts`` of every
    item, also per popularity group of the targets (``by_popularity``). With a ``fusion.Fusion`` the
    top-k is the fused one, and ``generative_alone`` holds the generative model's own."""
    start = time.perf_counter()
    ranked, alone = ranked_examples(
        model, tokenizer, trie, examples, user_tokens, beam_size, top_k, batch_size, bf16, desc, exclude_history,
        constrained, fusion,
    )  # fmt: skip
    metrics = ranking_metrics(ranked, examples.targets)
    if alone is not None:
        metrics["generative_alone"] = ranking_metrics(alone, examples.targets)
    if counts is not None:
        metrics["by_popularity"] = metrics_by_popularity(ranked, examples.targets, counts)
    if not constrained:
        metrics["invalid_share"] = float((ranked < 0).mean())
    metrics["users"] = len(examples)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def evaluate_protocols(
    model,
    tokenizer,
    trie,
    examples,
    user_tokens,
    beam_size=20,
    top_k=10,
    batch_size=512,
    bf16=False,
    exclude_history=False,
    counts: np.ndarray | None = None,
    desc="test",
    fusion=None,
) -> tuple[dict, dict[str, dict], dict[str, np.ndarray]]:
    """``evaluate`` under both protocols (``PROTOCOLS``): one decode with the users' history items
    ranked, one with them excluded.

    Returns the metrics of the protocol ``exclude_history`` names, the metrics of both by protocol,
    and each protocol's ``target_ranks`` (for paired comparisons with other models). With a
    ``fusion.Fusion`` these are of the fused ranking; the generative model's own are also returned,
    as ``generative_alone`` (by protocol) and ranks ``generative_alone/<protocol>``."""
    chosen = protocol_name(exclude_history)
    protocols, ranks, by_popularity, alone = {}, {}, None, {}
    for name, exclude in PROTOCOLS.items():
        start = time.perf_counter()
        ranked, generative = ranked_examples(
            model, tokenizer, trie, examples, user_tokens, beam_size, top_k, batch_size, bf16,
            f"{desc} ({name.replace('_', ' ')})", exclude, fusion=fusion,
        )  # fmt: skip
        if generative is not None:
            ranks[f"generative_alone/{name}"] = target_ranks(generative, examples.targets)
            alone[name] = mean_metrics(ranks[f"generative_alone/{name}"])
        ranks[name] = target_ranks(ranked, examples.targets)
        protocols[name] = mean_metrics(ranks[name])
        protocols[name]["seconds"] = round(time.perf_counter() - start, 2)
        if name == chosen and counts is not None:
            by_popularity = metrics_by_popularity(ranked, examples.targets, counts)
    metrics = {**protocols[chosen], "users": len(examples), "protocol": chosen}
    if by_popularity is not None:
        metrics["by_popularity"] = by_popularity
    if alone:
        metrics["generative_alone"] = alone
    return metrics, protocols, ranks
