"""Items added after training (``add-items``), ranked by their content and guided by the model.

The model never saw a new item's code combination as a target, so it scores new items below every
item it was trained with, and its order among them is close to chance. The cold-start study
(docs/studies/2026-11-30-cold-start.md) found a rule that ranks them well, the *guided* rule: new
items ordered by cosine similarity to the user's content profile, moved towards what the model
predicts,

    profile = (1 - pull) x unit mean of the history's unit vectors
              + pull x unit mean of the model's best ``guides`` items' unit vectors, weighted by their
                probability among them.

Serving (``reserve_new``) and the cold-start experiment rank with it. A run keeps the item vectors it
needs beside its Semantic IDs (``ids/item_vectors.npy``, float16, one row per ID row); ``add-items``
appends the new items' rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .decoding import ItemFilter
from .io import atomic_path

VECTORS_FILE = "item_vectors.npy"


def save_item_vectors(ids_dir: str | Path, vectors: np.ndarray) -> None:
    """Write the item vectors (one row per Semantic ID row) as float16, atomically."""
    with atomic_path(Path(ids_dir) / VECTORS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(vectors, dtype=np.float16))


def load_item_vectors(ids_dir: str | Path, num_items: int) -> np.ndarray | None:
    """The first ``num_items`` rows of the run's item vectors, memory-mapped; None when the run has no
    vectors for all of them (runs made before they were stored). Rows beyond ``num_items`` are those of
    an addition that died before its IDs were written: they are ignored, and the next addition
    overwrites them."""
    path = Path(ids_dir) / VECTORS_FILE
    if not path.is_file():
        return None
    vectors = np.load(path, mmap_mode="r")
    return vectors[:num_items] if vectors.ndim == 2 and len(vectors) >= num_items else None


def unit_rows(vectors) -> torch.Tensor:
    """The rows of ``vectors`` (any float array, a memory map included) as float32 unit vectors."""
    return F.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), dim=-1)


def history_profiles(vectors: np.ndarray, histories: list[np.ndarray], max_history: int) -> np.ndarray:
    """(N, dim) each user's content profile: the unit mean of the unit vectors of the last ``max_history``
    items (what the model reads); a user without history gets zeros."""
    dim = vectors.shape[1]
    rows = [
        unit_rows(vectors[h[-max_history:]]).mean(0) if len(h) else torch.zeros(dim)
        for h in (np.asarray(h, dtype=np.int64) for h in histories)
    ]
    return F.normalize(torch.stack(rows), dim=1).numpy() if rows else np.zeros((0, dim), np.float32)


def predicted_profiles(vectors: np.ndarray, predicted: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """(N, dim) unit profiles of the model's ``predicted`` items (N, P; -1 = none), each item weighted by
    its probability among them."""
    predicted = np.asarray(predicted, dtype=np.int64)
    weights = (
        torch.as_tensor(np.where(predicted >= 0, log_probs, -np.inf), dtype=torch.float32).softmax(1).nan_to_num(0.0)
    )
    unit = unit_rows(vectors[np.maximum(predicted, 0).ravel()]).reshape(*predicted.shape, -1)
    return F.normalize((weights[..., None] * unit).sum(1), dim=1).numpy()


def guided_profiles(history: np.ndarray, ahead: np.ndarray, pull: float) -> np.ndarray:
    """(N, dim) profiles between each user's history profile (pull 0) and the profile of the model's
    predicted items (pull 1)."""
    return (1 - pull) * history + pull * ahead  # the ranking needs no unit length


def rank_candidates(
    vectors: np.ndarray, profiles: np.ndarray, candidates: np.ndarray, allowed: ItemFilter, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items of ``candidates`` (item rows) nearest (cosine) to each profile, among those each
    row of ``allowed`` admits: items (N, k), -1 where fewer pass, and their cosine similarities."""
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = torch.as_tensor(profiles, dtype=torch.float32) @ unit_rows(vectors[candidates]).T
    for row, (excluded, only) in enumerate(zip(allowed.excluded, allowed.only)):
        out = np.isin(candidates, excluded) if only is None else ~np.isin(candidates, np.setdiff1d(only, excluded))
        scores[row, torch.from_numpy(out)] = float("-inf")
    top = scores.topk(min(k, len(candidates)), dim=1)
    items = np.where(np.isfinite(top.values.numpy()), candidates[top.indices.numpy()], -1)
    pad = ((0, 0), (0, k - items.shape[1]))
    return np.pad(items, pad, constant_values=-1), np.pad(top.values.numpy(), pad, constant_values=-np.inf)


def guided_rank(
    vectors: np.ndarray,
    histories: list[np.ndarray],
    guides: np.ndarray,
    guide_scores: np.ndarray,
    candidates: np.ndarray,
    allowed: ItemFilter,
    pull: float,
    k: int,
    max_history: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The guided rule: the ``k`` best of ``candidates`` for each user, from the user's ``histories`` and
    the model's best items ``guides`` (N, G; -1 = none) with their log-probabilities ``guide_scores``.
    Returns items (N, k; -1 pads) and their cosine similarities to the guided profile."""
    profiles = guided_profiles(
        history_profiles(vectors, histories, max_history), predicted_profiles(vectors, guides, guide_scores), pull
    )
    return rank_candidates(vectors, profiles, candidates, allowed, k)
