"""Scoring a test two ways: per-user metrics from target ranks, the history filter, the paired bootstrap."""

import math

import numpy as np
import pytest

from tigerrec.baselines import most_popular
from tigerrec.evaluate import (
    MISS,
    load_target_ranks,
    paired_bootstrap_ci,
    per_user_metrics,
    ranking_metrics,
    save_target_ranks,
    target_ranks,
)


def brute_force_metrics(ranked, targets, k):
    recall, ndcg = [], []
    for row, target in zip(ranked.tolist(), targets.tolist()):
        top = row[:k]
        recall.append(1.0 if target in top else 0.0)
        ndcg.append(1.0 / math.log2(top.index(target) + 2) if target in top else 0.0)
    return {f"recall@{k}": sum(recall) / len(recall), f"ndcg@{k}": sum(ndcg) / len(ndcg)}


def test_metrics_from_target_ranks_equal_brute_force():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(50)[:10] for _ in range(300)])
    ranked[::7, 3:] = -1  # rows with fewer than 10 items
    targets = rng.integers(0, 50, 300)
    expected = {**brute_force_metrics(ranked, targets, 5), **brute_force_metrics(ranked, targets, 10)}
    assert ranking_metrics(ranked, targets) == pytest.approx(expected)
    ranks = target_ranks(ranked, targets)
    assert all(r == MISS or ranked[i, r] == targets[i] for i, r in enumerate(ranks))


def test_a_target_in_the_history_is_a_miss_and_its_user_is_kept():
    # Item 0 is the most popular; user 0's target is item 0, already in its history.
    train = [np.array([0, 1]), np.array([0, 2]), np.array([0, 3])]
    histories = [np.array([0, 1]), np.array([2]), np.array([3])]
    targets = np.array([0, 0, 1])
    excluded = most_popular(train, 5, histories, 4, exclude_history=True)
    ranked = most_popular(train, 5, histories, 4, exclude_history=False)
    assert 0 not in excluded[0].tolist()
    ranks_excluded = target_ranks(excluded, targets)
    assert ranks_excluded[0] == MISS and len(ranks_excluded) == 3  # counted as a miss, not dropped
    assert per_user_metrics(ranks_excluded)["recall@5"].tolist() == [0.0, 1.0, 1.0]
    assert target_ranks(ranked, targets)[0] == 0  # ranked with the history, it is the top item


def test_paired_bootstrap_on_constructed_cases():
    n = 4000
    all_hit, none_hit = np.zeros(n, dtype=np.int32), np.full(n, MISS, dtype=np.int32)
    assert paired_bootstrap_ci(all_hit, none_hit, "recall@10") == [1.0, 1.0]
    assert paired_bootstrap_ci(all_hit, all_hit, "ndcg@10") == [0.0, 0.0]
    # A finds the target (first) for every other user, B for none: difference 0.5, standard error
    # sqrt(0.25 / n); a 95% interval is about +-1.96 of them.
    half = np.where(np.arange(n) % 2 == 0, 0, MISS).astype(np.int32)
    low, high = paired_bootstrap_ci(half, none_hit, "recall@10")
    se = math.sqrt(0.25 / n)
    assert low < 0.5 < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # Pairing: the same users hit by both cancel; only the users where they differ count.
    b = np.where(np.arange(n) % 4 == 0, 0, MISS).astype(np.int32)  # a subset of half's hits
    low, high = paired_bootstrap_ci(half, b, "recall@10")
    assert low < 0.25 < high and high - low < 2 * 1.96 * math.sqrt(0.25 * 0.75 / n) * 1.15
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_ci(half, b[:10], "recall@10")


def test_target_ranks_round_trip(tmp_path):
    ranks = {"history_excluded": np.array([0, MISS, 3], dtype=np.int32), "history_ranked": np.array([1, 2, MISS])}
    save_target_ranks(tmp_path / "r.npz", ranks)
    loaded = load_target_ranks(tmp_path / "r.npz")
    assert {k: v.tolist() for k, v in loaded.items()} == {k: v.tolist() for k, v in ranks.items()}
    assert load_target_ranks(tmp_path / "missing.npz") is None
