"""Scoring a test two ways, per-user metrics, the paired bootstrap and the test ledger."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tigerrec.baselines import SASRec, most_popular, sampled_softmax_loss
from tigerrec.config import SASRecConfig
from tigerrec.evaluate import (
    MISS,
    load_target_ranks,
    paired_bootstrap_ci,
    per_user_metrics,
    ranking_metrics,
    save_target_ranks,
    target_ranks,
)
from tigerrec.ledger import LEDGER_ENV, config_hash, record_test


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


def test_sampled_softmax_equals_its_definition():
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(hidden=8))
    states = torch.randn(2, 3, 8)
    targets = torch.tensor([[4, 7, -1], [0, 19, 2]])  # -1: padding
    negatives = torch.tensor([[1, 7, 9], [2, 3, 5]])  # row 0 draws its own position-1 target (7)
    loss = sampled_softmax_loss(model, states, targets, negatives)
    table = model.items.weight
    terms = []
    for b in range(2):
        for t in range(3):
            target = targets[b, t].item()
            if target < 0:
                continue
            others = [n for n in negatives[b].tolist() if n != target]  # an accidental hit is left out
            logits = torch.stack([states[b, t] @ table[i + 1] for i in [target, *others]])
            terms.append(-F.log_softmax(logits, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_sampled_softmax_with_every_item_as_a_negative_is_the_full_softmax():
    torch.manual_seed(0)
    num_items = 12
    model = SASRec(num_items, SASRecConfig(hidden=8))
    states = torch.randn(3, 4, 8)
    targets = torch.randint(0, num_items, (3, 4))
    every_item = torch.arange(num_items).expand(3, -1)
    full = F.cross_entropy(model.logits(states).flatten(0, 1), targets.flatten())
    assert sampled_softmax_loss(model, states, targets, every_item).item() == pytest.approx(full.item(), rel=1e-5)


def test_every_test_evaluation_appends_a_ledger_line(tmp_path, monkeypatch):
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(LEDGER_ENV, str(ledger))
    record_test("beauty", {"a": 1, "b": {"c": 2}}, "SASRec", {"history_excluded": {"recall@10": 0.1}})
    record_test("toys", {"b": {"c": 2}, "a": 1}, "TIGER", {"history_excluded": {"recall@10": 0.2}})
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [line["dataset"] for line in lines] == ["beauty", "toys"]
    assert lines[0]["config_hash"] == lines[1]["config_hash"] == config_hash({"a": 1, "b": {"c": 2}})
    assert set(lines[0]) == {"date", "dataset", "config_hash", "model", "metrics"}
    assert config_hash({"a": 2}) != config_hash({"a": 1})
