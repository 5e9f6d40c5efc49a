"""Decoding: the prefix trie, beam search (constrained, filtered, sampled, with a popularity penalty)
and merging two ranked lists under a cap."""

import numpy as np
import pytest
import torch
from conftest import small_tiger

from tigerrec.decoding import ItemFilter, PrefixTrie, generate, merge_capped


def test_trie_follows_only_real_ids():
    codes = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [3, 0, 0, 0]])
    trie = PrefixTrie(codes, 4)
    nodes = torch.zeros(1, dtype=torch.long)
    assert (trie.children(nodes)[0] >= 0).tolist() == [True, False, False, True]
    for code in [0, 1, 2, 1]:
        nodes = trie.children(nodes)[:, code]
    assert nodes.item() == 1  # the item index
    dead = trie.children(torch.zeros(1, dtype=torch.long))[:, 2]
    assert dead.item() == -1 and (trie.children(dead) == -1).all()
    with pytest.raises(ValueError, match="not unique"):
        PrefixTrie(np.array([[0, 1], [0, 1]]), 4)


def test_trie_children_match_a_dense_table():
    codes = np.random.default_rng(0).integers(0, 6, size=(300, 4))
    codes = np.unique(codes, axis=0)
    trie = PrefixTrie(codes, 6)
    dense = {}  # (node, code) -> child, from walking every ID
    for item, row in enumerate(codes):
        node = 0
        for depth, code in enumerate(row):
            child = item if depth == 3 else int(trie.item_prefixes[item, depth + 1])
            assert dense.setdefault((node, int(code)), child) == child
            node = child
    nodes = torch.arange(-1, trie.num_nodes)
    children = trie.children(nodes)
    for node in range(-1, trie.num_nodes):
        expected = [dense.get((node, code), -1) if node >= 0 else -1 for code in range(6)]
        assert children[node + 1].tolist() == expected


def test_constrained_beam_search_returns_only_real_distinct_items():
    codes, tokenizer, model, tokens = small_tiger()
    out = generate(model, tokens, PrefixTrie(codes, 8), beam_size=12, top_k=10)
    assert out.items.shape == (16, 10)
    assert (out.items >= 0).all()
    for row_items, row_codes in zip(out.items, out.codes):
        assert len(set(row_items.tolist())) == 10
        assert (codes[row_items.numpy()] == row_codes.numpy()).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()


def test_the_last_decoder_pass_runs_only_for_beams_whose_prefix_holds_several_items():
    codes, tokenizer, model, tokens = small_tiger()
    trie = PrefixTrie(codes, 8)
    decoded_rows, prefixes = [], []
    decode, children = model.decode, trie.children

    def counting_decode(decoder_tokens, *args):
        decoded_rows.append(len(decoder_tokens))
        return decode(decoder_tokens, *args)

    def recording_children(nodes):
        prefixes.append(nodes.clone())
        return children(nodes)

    model.decode, trie.children = counting_decode, recording_children
    out = generate(model, tokens, trie, beam_size=12, top_k=12)
    del model.decode, trie.children
    last = prefixes[-1]  # (16, 12): the prefixes of the beams entering the last step
    shared = int((torch.from_numpy(trie.node_size)[last] > 1).sum())
    assert 0 < shared < last.numel() and decoded_rows == [16, 16 * 8, 16 * 12, shared]
    assert torch.equal(generate(model, tokens, trie, beam_size=12, top_k=12).items, out.items)


def test_popularity_penalty_subtracts_weight_times_log_count_from_every_items_score():
    codes, tokenizer, model, tokens = small_tiger()
    trie = PrefixTrie(codes, 8)
    counts = np.random.default_rng(1).integers(0, 50, size=len(codes))
    # 60 beams over 60 items keep every prefix at every step: the search is exhaustive.
    plain = generate(model, tokens, trie, beam_size=60, top_k=60)
    penalized = generate(model, tokens, trie.penalize_popularity(counts, 0.5), beam_size=60, top_k=60)
    total_mass = (counts + 1).sum()
    for row in range(len(tokens)):
        before = dict(zip(plain.items[row].tolist(), plain.scores[row].tolist()))
        after = dict(zip(penalized.items[row].tolist(), penalized.scores[row].tolist()))
        assert set(before) == set(after) == set(range(len(codes)))
        for item, score in before.items():
            expected = score - 0.5 * np.log(1 + counts[item]) + 0.5 * np.log(total_mass)
            assert after[item] == pytest.approx(expected, abs=1e-4)
    # A heavy penalty on the most frequent item pushes it out of every top 10; weight 0 removes the penalty.
    heavy = np.zeros(len(codes), dtype=np.int64)
    heavy[plain.items[0, 0]] = 10**9
    assert (generate(model, tokens[:1], trie.penalize_popularity(heavy, 1.0), 20, 10).items != plain.items[0, 0]).all()
    assert torch.equal(generate(model, tokens, trie.penalize_popularity(counts, 0.0), 60, 60).items, plain.items)
    with pytest.raises(ValueError, match="counts hold 3 items"):
        trie.penalize_popularity(np.ones(3), 0.5)


def test_unconstrained_search_reports_invalid_ids():
    codes, tokenizer, model, tokens = small_tiger()
    out = generate(model, tokens, PrefixTrie(codes, 8), beam_size=12, top_k=10, constrained=False)
    # 60 items among 8^4 = 4096 possible IDs: an untrained model mostly generates IDs of no item.
    assert (out.items == -1).float().mean() > 0.5
    valid = out.items >= 0
    assert (torch.from_numpy(codes)[out.items[valid]] == out.codes[valid]).all()


def test_temperature_zero_sampling_equals_greedy_beam_top1():
    codes, tokenizer, model, tokens = small_tiger()
    trie = PrefixTrie(codes, 8)
    greedy = generate(model, tokens, trie, beam_size=1, top_k=1)
    sampled = generate(
        model, tokens, trie, beam_size=1, top_k=1, temperature=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(sampled.items[:, 0], greedy.items[:, 0])
    assert torch.allclose(sampled.scores[:, 0], greedy.scores[:, 0])
    # With more beams, the first sampled ID at temperature 0 is still the greedy one.
    wide = generate(
        model, tokens, trie, beam_size=10, top_k=10, temperature=0.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(wide.items[:, 0], greedy.items[:, 0])


def test_filtered_beam_search_keeps_to_the_allowed_items_and_fills_k_when_it_can():
    codes, tokenizer, model, tokens = small_tiger()
    trie = PrefixTrie(codes, 8)
    rng = np.random.default_rng(1)
    allowed = torch.from_numpy(rng.random((16, len(codes))) < 0.3)
    allowed[0] = False
    allowed[0, [5, 17, 40]] = True  # fewer allowed items than k
    out = generate(model, tokens, trie, beam_size=12, top_k=10, allowed=ItemFilter.from_mask(allowed))
    for row in range(16):
        items = out.items[row][out.items[row] >= 0].tolist()
        assert all(allowed[row, item] for item in items)
        assert len(items) == len(set(items)) == min(10, int(allowed[row].sum()))
    assert sorted(out.items[0, :3].tolist()) == [5, 17, 40] and (out.items[0, 3:] == -1).all()
    # With a beam as wide as the catalogue, beam search is exhaustive: filtering inside decoding
    # gives what filtering the full ranking afterwards gives.
    full = generate(model, tokens, trie, beam_size=len(codes), top_k=len(codes))
    inside = generate(model, tokens, trie, beam_size=len(codes), top_k=5, allowed=ItemFilter.from_mask(allowed))
    for row in range(1, 16):
        keep = allowed[row, full.items[row]]
        assert inside.items[row].tolist() == full.items[row][keep][:5].tolist()
        assert torch.allclose(inside.scores[row], full.scores[row][keep][:5], atol=1e-5)
    unfiltered = generate(model, tokens, trie, beam_size=12, top_k=10, allowed=ItemFilter([[]] * 16))
    assert torch.equal(unfiltered.items, generate(model, tokens, trie, beam_size=12, top_k=10).items)


def test_excluded_items_and_allow_lists_equal_filtering_an_exhaustive_ranking():
    codes, tokenizer, model, tokens = small_tiger()
    trie = PrefixTrie(codes, 8)
    rng = np.random.default_rng(2)
    # Exclusions that empty whole prefixes (every item under a depth-1 node) and repeat items.
    under_first = np.flatnonzero(codes[:, 0] == codes[0, 0])
    excluded = [rng.choice(len(codes), size=rng.integers(0, 20)) for _ in range(16)]
    excluded[0] = np.concatenate([under_first, under_first[:2]])
    only = [None if row % 3 else rng.choice(len(codes), size=rng.integers(1, 30), replace=False) for row in range(16)]
    item_filter = ItemFilter(excluded, only)
    mask = item_filter.mask(len(codes))
    for row in range(16):  # the mask is the brute-force reading of the lists
        allowed = set(range(len(codes))) if only[row] is None else set(only[row].tolist())
        assert set(torch.nonzero(mask[row]).flatten().tolist()) == allowed - set(excluded[row].tolist())
    full = generate(model, tokens, trie, beam_size=len(codes), top_k=len(codes))
    inside = generate(model, tokens, trie, beam_size=10, top_k=10, allowed=item_filter)
    exhaustive = generate(model, tokens, trie, beam_size=len(codes), top_k=10, allowed=item_filter)
    for row in range(16):
        kept = full.items[row][mask[row, full.items[row]]]
        assert exhaustive.items[row][: len(kept)].tolist() == kept[:10].tolist()
        got = inside.items[row][inside.items[row] >= 0]
        assert mask[row, got].all() and len(got) == min(10, int(mask[row].sum()))
    assert not set(inside.items[0].tolist()) & set(under_first.tolist())


def test_history_exclusion_on_a_catalogue_too_large_for_dense_masks():
    # 300,000 items and 4,096 rows: the (rows x items) masks of a dense filter would take over a GB
    # (and the per-node counts of each row far more); the lists take what the histories hold.
    rng = np.random.default_rng(3)
    flat = rng.choice(256**3, size=300_000, replace=False)
    codes = np.stack([flat // 65536, flat // 256 % 256, flat % 256, np.zeros_like(flat)], axis=1)
    trie = PrefixTrie(codes, 256)
    assert trie.nbytes() < 40e6
    histories = [rng.choice(len(codes), size=20) for _ in range(4096)]
    restriction = trie.restrict(ItemFilter(histories))
    assert sum(keys.numel() for keys, _ in restriction.steps) <= 4096 * 20 * 4
    # The last step closes exactly each row's history items under the prefix that a beam holds.
    rows = torch.arange(4096)
    items = torch.from_numpy(np.array([h[0] for h in histories]))
    nodes = torch.from_numpy(trie.item_prefixes[items.numpy(), 3].astype(np.int64))[:, None]
    children = trie.children(nodes)
    valid = restriction.apply(children >= 0, nodes, 3)
    last_codes = torch.from_numpy(codes[items.numpy(), 3])
    assert not valid[rows, 0, last_codes].any() and children[rows, 0, last_codes].eq(items).all()
    assert valid.sum() == (children >= 0).sum() - len(rows)  # one item per prefix: only it closed


def test_merge_capped_takes_the_best_by_score_with_at_most_cap_from_the_second_list():
    items, scores = np.array([[1, 2, 3], [4, -1, -1]]), np.array([[-1.0, -2.0, -5.0], [-3.0, -np.inf, -np.inf]])
    extra, extra_scores = np.array([[10, 11, 12], [13, 14, -1]]), np.array([[-0.5, -1.5, -1.7], [-0.1, -0.2, -np.inf]])
    merged, merged_scores = merge_capped(items, scores, extra, extra_scores, cap=2, k=4)
    assert merged.tolist() == [[10, 1, 11, 2], [13, 14, 4, -1]]
    assert merged_scores[0].tolist() == [-0.5, -1.0, -1.5, -2.0] and merged_scores[1, 3] == -np.inf
    assert merge_capped(items, scores, extra, extra_scores, cap=0, k=3)[0].tolist() == [[1, 2, 3], [4, -1, -1]]
    per_row = merge_capped(items, scores, extra, extra_scores, cap=np.array([1, 0]), k=5)[0]
    assert per_row.tolist() == [[10, 1, 2, 3, -1], [4, -1, -1, -1, -1]]


def test_merge_capped_reserve_always_admits_the_best_cap_of_the_second_list():
    items, scores = np.array([[1, 2, 3, 4]]), np.array([[-1.0, -2.0, -3.0, -4.0]])
    extra, extra_scores = (
        np.array([[10, 11, 12]]),
        np.array([[-8.0, -9.0, -0.5]]),
    )  # not sorted: the first cap are taken
    assert merge_capped(items, scores, extra, extra_scores, cap=2, k=4)[0].tolist() == [[1, 2, 3, 4]]
    merged, merged_scores = merge_capped(items, scores, extra, extra_scores, cap=2, k=4, reserve=True)
    assert merged.tolist() == [[1, 2, 10, 11]] and merged_scores.tolist() == [[-1.0, -2.0, -8.0, -9.0]]
    # Fewer new items than the cap: the first list fills the rest; no slot is left empty.
    short = merge_capped(
        items, scores, np.array([[10, -1, -1]]), np.array([[-8.0, -np.inf, -np.inf]]), cap=3, k=4, reserve=True
    )
    assert short[0].tolist() == [[1, 2, 3, 10]]
