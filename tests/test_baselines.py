"""The baselines: counting models, Semantic_KNN and SASRec (its training and its losses)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tigerrec.baselines import (
    SASRec,
    markov,
    most_popular,
    sampled_softmax_loss,
    sasrec_recommend,
    semantic_knn,
    train_sasrec,
)
from tigerrec.config import SASRecConfig
from tigerrec.data import leave_one_out, make_tiny
from tigerrec.evaluate import ranking_metrics
from tigerrec.sequences import Examples, training_windows


def test_most_popular_counts_training_parts():
    train = [np.array([0, 1]), np.array([1, 2]), np.array([1])]
    histories = [np.array([1]), np.array([3])]
    assert most_popular(train, 4, histories, 3).tolist() == [[1, 0, 2], [1, 0, 2]]
    assert most_popular(train, 4, histories, 3, exclude_history=True).tolist() == [[0, 2, 3], [1, 0, 2]]


def test_semantic_knn_ranks_by_cosine_to_the_mean_history():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.2], [0.1, 1.0]])
    assert semantic_knn(embeddings, [np.array([0])], 3).tolist() == [[2, 3, 1]]
    assert semantic_knn(embeddings, [np.array([0])], 4, exclude_history=False)[0, 0] == 0
    # Profile = mean of unit vectors of items 0 and 1 = the diagonal; 2 and 3 are equally far from it.
    assert set(semantic_knn(embeddings, [np.array([0, 1])], 2)[0].tolist()) == {2, 3}
    assert semantic_knn(embeddings, [np.array([0])], 2, among=np.array([True, True, False, True]))[0].tolist() == [3, 1]
    # More users than one chunk (1,024): every user is ranked from their own profile.
    many = [np.array([i % 2]) for i in range(2500)]
    assert (semantic_knn(embeddings, many, 1)[:, 0] == np.where(np.arange(2500) % 2, 3, 2)).all()


def test_markov_ranks_what_followed_the_last_item_then_popularity():
    train = [np.array([0, 1, 2]), np.array([0, 1, 3]), np.array([0, 2, 3]), np.array([3, 3])]
    histories = [np.array([5, 0]), np.array([1]), np.array([4])]
    ranked = markov(train, 6, histories, 4)
    assert ranked[0].tolist() == [1, 2, 3, 0]  # after 0: item 1 twice, item 2 once; then by popularity
    assert ranked[1].tolist() == [3, 2, 0, 1]  # after 1: 2 and 3 once each (popularity breaks the tie)
    assert ranked[2].tolist() == [3, 0, 1, 2]  # item 4 never seen: popularity (3: 4 times, then 0, 1, 2 by count/index)
    assert 0 not in markov(train, 6, histories, 4, exclude_history=True)[0].tolist()


def test_training_windows_cover_every_target_once():
    windows = training_windows([np.arange(12), np.array([5])], max_len=5)
    targets = sorted(t for w in windows for t in w[1:].tolist())
    assert targets == list(range(1, 12)) and all(len(w) <= 6 for w in windows)


def test_sasrec_overfits_the_tiny_dataset():
    dataset = make_tiny()
    split = leave_one_out(dataset)
    cfg = SASRecConfig(hidden=32, dropout=0.0, epochs=60, batch_size=64, lr=0.01, negatives=16, bf16="off")
    model, summary = train_sasrec(split.train, dataset.num_items, split.valid_history, split.valid_target, cfg)
    train = Examples.training(split.train, cfg.max_len)
    histories = [h[:n] for h, n in zip(train.histories, train.lengths)]
    assert ranking_metrics(sasrec_recommend(model, histories, 10), train.targets)["recall@10"] >= 0.95
    assert summary["best_valid_ndcg@10"] > 0.8 and summary["selection_metric"] == "ndcg@10"


def test_untrained_sasrec_scores_items_almost_uniformly():
    # The item table doubles as the output layer; a start far from uniform saturates the softmax.
    torch.manual_seed(0)
    num_items = 500
    model = SASRec(num_items, SASRecConfig()).eval()
    tokens = torch.randint(1, num_items + 1, (64, 20))
    with torch.no_grad():
        logits = model.logits(model(tokens)).flatten(0, 1)
    loss = F.cross_entropy(logits, torch.randint(0, num_items, (len(logits),)))
    assert abs(loss.item() - math.log(num_items)) < 1.0
    assert model.items.weight[0].abs().sum() == 0  # padding stays zero


def test_sasrec_stops_after_patience_and_records_its_curve():
    dataset = make_tiny()
    split = leave_one_out(dataset)
    # A rate too small to move the ranking: no validation after the first is a new best.
    cfg = SASRecConfig(hidden=32, dropout=0.0, epochs=100, patience=2, lr=1e-12, bf16="off")
    _, summary = train_sasrec(split.train, dataset.num_items, split.valid_history, split.valid_target, cfg)
    assert summary["epochs"] == 3 and summary["best_epoch"] == 1 and summary["stopped_by"] == "patience"
    curve = summary["history"]
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert [row["samples"] for row in curve] == sorted({row["samples"] for row in curve}) and curve[0]["samples"] > 0
    assert all(row["minutes"] >= 0 for row in curve)


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
