"""Ranking metrics, per popularity group too, and evaluation with the history kept out of the ranking."""

import numpy as np
import pytest
import torch
from conftest import small_tiger

from tigerrec.decoding import PrefixTrie
from tigerrec.device import keep_freed_memory
from tigerrec.evaluate import evaluate, item_counts, metrics_by_popularity, ranking_metrics, recommend_examples
from tigerrec.sequences import Examples


def test_ranking_metrics_hand_computed():
    ranked = np.array(
        [[3, 1, 2, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [9, 9, 9, 9, 9, 9, 9, 9, 9, 9]]
    )
    targets = np.array([3, 7, 0])  # rank 0, rank 6, miss
    m = ranking_metrics(ranked, targets)
    assert m["recall@5"] == pytest.approx(1 / 3) and m["recall@10"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(8)) / 3)


def test_metrics_by_popularity_split_the_targets_by_their_training_counts():
    train = [np.array([0, 1, 1]), np.array([1, 2] * 12)]  # item 0 once, item 1 14 times, item 2 12 times, item 3 never
    counts = item_counts(train, 5)
    assert counts.tolist() == [1, 14, 12, 0, 0]
    assert metrics_by_popularity(np.zeros((0, 10), dtype=np.int64), np.zeros(0, dtype=np.int64), counts) == {}
    # item 1 seen 25 times after adding a head sequence: three groups
    counts = item_counts(train + [np.array([1] * 11)], 5)
    ranked = np.array([[0] + list(range(5, 14)), [4] * 9 + [3], [1] + [4] * 9, [2] * 10])
    targets = np.array([0, 3, 1, 1])  # tail hit at rank 0, tail hit at rank 9, head hit at rank 0, head miss
    groups = metrics_by_popularity(ranked, targets, counts)
    assert list(groups) == ["0-4", "20+"]  # no target in the middle group: it is left out
    assert groups["0-4"]["users"] == 2 and groups["20+"]["users"] == 2
    assert groups["0-4"]["recall@5"] == 0.5 and groups["0-4"]["recall@10"] == 1.0
    assert groups["20+"]["ndcg@10"] == 0.5
    overall = ranking_metrics(ranked, targets)
    for metric in overall:  # the groups, weighted by their users, give the overall metrics back
        assert sum(g[metric] * g["users"] for g in groups.values()) / len(targets) == pytest.approx(overall[metric])
    assert list(metrics_by_popularity(ranked, np.array([2, 2, 2, 2]), counts)) == ["5-19"]


def test_evaluation_can_keep_each_users_history_out_of_its_ranking():
    codes, tokenizer, model, _ = small_tiger()
    rng = np.random.default_rng(2)
    histories = [rng.choice(len(codes), size=n, replace=False) for n in (1, 3, 5, 2)]
    examples = Examples.from_histories(histories, [0, 1, 2, 3], np.arange(4), max_history=5)
    user_tokens = np.full(4, tokenizer.user_offset)
    trie = PrefixTrie(codes, 8)
    plain, _, _ = recommend_examples(
        model, tokenizer, trie, examples, user_tokens, beam_size=len(codes), top_k=len(codes)
    )
    kept, _, _ = recommend_examples(
        model, tokenizer, trie, examples, user_tokens, beam_size=len(codes), top_k=10, exclude_history=True
    )
    for row, history in enumerate(histories):
        assert not set(kept[row].tolist()) & set(history.tolist())
        # An exhaustive beam: the same ranking with the history items taken out.
        assert kept[row].tolist() == [item for item in plain[row] if item not in history][:10]
    # A target that sits in its history can no longer be hit; the others are ranked higher or equal.
    examples.targets[:] = [histories[0][0], *plain[1:, 0]]
    counts = item_counts(histories, len(codes))
    metrics = evaluate(
        model, tokenizer, trie, examples, user_tokens, beam_size=len(codes), exclude_history=True, counts=counts
    )
    assert metrics["recall@10"] == pytest.approx(sum(t not in h for t, h in zip(examples.targets, histories)) / 4)
    assert sum(group["users"] for group in metrics["by_popularity"].values()) == 4
    assert metrics["by_popularity"]["0-4"]["recall@10"] == metrics["recall@10"]  # every item is seen under 5 times


def test_evaluation_keeps_the_whole_history_out_not_only_the_model_input_window():
    codes, tokenizer, model, _ = small_tiger()
    trie, user_tokens = PrefixTrie(codes, 8), np.full(1, tokenizer.user_offset)
    window = np.array([3, 1, 4, 5, 9])  # max_history = 5: all the model sees
    short = Examples.from_histories([window], [0], np.arange(1), max_history=5, keep_seen=True)
    plain, _, _ = recommend_examples(model, tokenizer, trie, short, user_tokens, beam_size=len(codes), top_k=len(codes))
    older = np.array([item for item in plain[0] if item not in window][:7])  # the 7 best items, seen before the window
    long = Examples.from_histories([np.concatenate([older, window])], [0], np.arange(1), max_history=5, keep_seen=True)
    assert long.histories.tolist() == short.histories.tolist()  # the same model input
    assert long.subset(np.array([0])).seen_items(np.array([0]))[0].tolist() == [*older, *window]
    kept, _, _ = recommend_examples(
        model, tokenizer, trie, long, user_tokens, beam_size=len(codes), top_k=10, exclude_history=True
    )
    seen = {*older.tolist(), *window.tolist()}
    assert kept[0].tolist() == [item for item in plain[0] if item not in seen][:10]


def test_batches_decoded_side_by_side_give_what_one_at_a_time_gives(monkeypatch):
    import itertools
    import threading

    import tigerrec.evaluate as evaluate_module

    codes, tokenizer, model, _ = small_tiger()
    rng = np.random.default_rng(5)
    histories = [rng.choice(len(codes), size=rng.integers(1, 6), replace=False) for _ in range(23)]
    examples = Examples.from_histories(histories, np.zeros(23, dtype=np.int64), np.arange(23), max_history=5)
    user_tokens, trie = np.full(23, tokenizer.user_offset), PrefixTrie(codes, 8)
    rank, results = evaluate_module.rank, {}
    for workers in (1, 3):
        calls, together = itertools.count(), threading.Barrier(workers, timeout=60)

        def spy(*args, calls=calls, together=together):
            if next(calls) < together.parties:
                together.wait()  # broken, and the test fails, unless the first batches decode at once
            return rank(*args)

        monkeypatch.setattr(evaluate_module, "rank", spy)
        monkeypatch.setattr(evaluate_module, "decode_workers", lambda device, n=workers: (n, 1))
        results[workers] = recommend_examples(
            model, tokenizer, trie, examples, user_tokens, beam_size=6, top_k=4, batch_size=2, exclude_history=True
        )
    for one, several in zip(results[1], results[3]):
        np.testing.assert_array_equal(one, several)


@pytest.mark.skipif(not keep_freed_memory(), reason="glibc's allocator only")
def test_freed_memory_is_reused_without_faulting_its_pages_in_again():
    """Three 16 MB tensors made and freed ten times: glibc's defaults hand the freed blocks back to the kernel
    each time, and every reallocation faults its pages in anew (tens of thousands of faults); once
    ``keep_freed_memory`` has run, they are reused."""
    import resource

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    block = (16 << 20) // 4  # float32 values in 16 MB
    for _round in range(2):  # the first round grows the heap to what the loop needs
        before = faults()
        for _ in range(10):
            held = [torch.ones(block) for _ in range(3)]
            del held
    assert faults() - before < block * 4 // 4096  # under one block's pages in all
