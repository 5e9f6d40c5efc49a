import numpy as np
import pytest
import torch
from conftest import tiny_config

from tigerrec.config import ModelConfig
from tigerrec.decoding import PrefixTrie, generate, merge_capped
from tigerrec.evaluate import evaluate, item_counts, metrics_by_popularity, ranking_metrics, recommend_examples
from tigerrec.model import TigerEnsemble, TigerModel
from tigerrec.sequences import PAD, Examples, Tokenizer, length_bucketed_batches, user_bucket


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


def test_trie_follows_only_real_ids():
    codes = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [3, 0, 0, 0]])
    trie = PrefixTrie(codes, 4)
    nodes = torch.zeros(1, dtype=torch.long)
    assert trie.allowed(nodes)[0].tolist() == [True, False, False, True]
    for code in [0, 1, 2, 1]:
        nodes = trie.step(nodes, torch.tensor([code]))
    assert nodes.item() == 1  # the item index
    dead = trie.step(torch.zeros(1, dtype=torch.long), torch.tensor([2]))
    assert dead.item() == -1 and not trie.allowed(dead).any()


def small_setup(num_items=60, size=8, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, size, size=(num_items * 3, 4)), axis=0)[:num_items]
    tokenizer = Tokenizer(codes, size, user_buckets=10, max_history=5)
    cfg = ModelConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1, decoder_layers=2)
    torch.manual_seed(seed)
    model = TigerModel(cfg, tokenizer.vocab_size, 4, size).eval()
    histories = torch.from_numpy(rng.integers(0, len(codes), size=(16, 5)))
    tokens = tokenizer.encoder_input(histories, torch.full((16,), tokenizer.user_offset))
    return codes, tokenizer, model, tokens


def test_constrained_beam_search_returns_only_real_distinct_items():
    codes, tokenizer, model, tokens = small_setup()
    out = generate(model, tokens, PrefixTrie(codes, 8), beam_size=12, top_k=10)
    assert out.items.shape == (16, 10)
    assert (out.items >= 0).all()
    for row_items, row_codes in zip(out.items, out.codes):
        assert len(set(row_items.tolist())) == 10
        assert (codes[row_items.numpy()] == row_codes.numpy()).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()


def test_popularity_penalty_subtracts_weight_times_log_count_from_every_items_score():
    codes, tokenizer, model, tokens = small_setup()
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


def test_ensemble_scores_each_item_by_the_members_mean_log_probabilities_at_every_step():
    codes, tokenizer, first, tokens = small_setup()
    second = small_setup(seed=1)[2]
    ensemble = TigerEnsemble([first, second])
    trie = PrefixTrie(codes, 8)
    out = generate(ensemble, tokens[:3], trie, beam_size=60, top_k=60)  # exhaustive: every item scored
    decoder_tokens = tokenizer.decoder_input(torch.from_numpy(codes))
    for row in range(3):
        inputs = tokens[row : row + 1].expand(len(codes), -1)
        mean = torch.stack([m(inputs, decoder_tokens).log_softmax(-1) for m in (first, second)]).mean(0).log_softmax(-1)
        expected = mean.gather(2, torch.from_numpy(codes)[..., None]).squeeze(-1).sum(1)
        got = dict(zip(out.items[row].tolist(), out.scores[row].tolist()))
        assert set(got) == set(range(len(codes)))
        assert torch.allclose(torch.tensor([got[i] for i in range(len(codes))]), expected, atol=1e-4)
    # One member, or the same model twice, ranks as the model alone.
    alone = generate(first, tokens, trie, beam_size=12, top_k=10)
    for members in ([first], [first, first]):
        same = generate(TigerEnsemble(members), tokens, trie, beam_size=12, top_k=10)
        assert torch.equal(same.items, alone.items) and torch.allclose(same.scores, alone.scores, atol=1e-4)
    other_ids = TigerModel(first.cfg, tokenizer.vocab_size, 4, 16)
    with pytest.raises(ValueError, match="must share Semantic IDs"):
        TigerEnsemble([first, other_ids])


def test_unconstrained_search_reports_invalid_ids():
    codes, tokenizer, model, tokens = small_setup()
    out = generate(model, tokens, PrefixTrie(codes, 8), beam_size=12, top_k=10, constrained=False)
    # 60 items among 8^4 = 4096 possible IDs: an untrained model mostly generates IDs of no item.
    assert (out.items == -1).float().mean() > 0.5
    valid = out.items >= 0
    assert (torch.from_numpy(codes)[out.items[valid]] == out.codes[valid]).all()


def test_temperature_zero_sampling_equals_greedy_beam_top1():
    codes, tokenizer, model, tokens = small_setup()
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


def test_tokenizer_layout():
    codes = np.array([[1, 2, 3, 0], [4, 5, 6, 1]])
    tok = Tokenizer(codes, 8, user_buckets=10, max_history=3)
    history = torch.tensor([[1, 0, -1]])
    tokens = tok.encoder_input(history, torch.tensor([tok.user_token("u1")]))
    offset = 2  # PAD, BOS
    assert tokens[0, 1:].tolist() == [
        offset + 4,
        offset + 8 + 5,
        offset + 16 + 6,
        offset + 24 + 1,
        offset + 1,
        offset + 8 + 2,
        offset + 16 + 3,
        offset + 24 + 0,
    ]
    assert tok.user_offset <= tokens[0, 0] < tok.vocab_size
    assert user_bucket("u1", 2000) == user_bucket("u1", 2000)  # stable across processes by construction
    assert tok.decoder_input(torch.tensor([[4, 5, 6, 1]])).tolist() == [
        [1, offset + 4, offset + 8 + 5, offset + 16 + 6]
    ]


@pytest.mark.parametrize("history", ["codes", "items", "pooled"])
def test_anonymous_share_trains_the_reserved_unknown_user_token(history):
    from tigerrec.train import TrainData

    codes = np.array([[1, 2, 3, 0], [1, 2, 4, 0], [5, 6, 7, 0]])
    plain = Tokenizer(codes, 8, user_buckets=10, max_history=4, history=history)
    tok = Tokenizer(codes, 8, user_buckets=10, max_history=4, history=history, anonymous_token=True)
    assert plain.user_token(None) == PAD  # no reserved token: masked out like padding
    assert tok.user_token(None) == tok.anonymous_user == plain.vocab_size and tok.vocab_size == plain.vocab_size + 1
    assert tok.user_token("alice") == plain.user_token("alice")
    ex = Examples.training([np.array([0, 1, 2, 0, 1])] * 50, max_history=4)
    users = np.full(50, tok.user_token("alice"))
    first_token = (lambda t: t[:, 0]) if history == "codes" else (lambda t: t[:, 0, 0])
    for share, anonymous in [(0.0, 0), (1.0, len(ex))]:
        data = TrainData(tok, PrefixTrie(codes, 8), ex, ex, users, anonymous_share=share)
        tokens = first_token(data.batch(np.arange(len(ex)))[0])
        assert int((tokens == tok.anonymous_user).sum()) == anonymous
    torch.manual_seed(0)
    tokens = first_token(
        TrainData(tok, PrefixTrie(codes, 8), ex, ex, users, anonymous_share=0.25).batch(np.arange(len(ex)))[0]
    )
    assert 0.1 < float((tokens == tok.anonymous_user).float().mean()) < 0.4
    assert set(tokens.tolist()) == {tok.anonymous_user, tok.user_token("alice")}


def test_pooled_history_reads_one_token_per_item_bidirectionally_with_one_target_per_example():
    """history=pooled: the paper's examples and bidirectional encoder over one mean-of-codes token per item."""
    from tigerrec.pipeline import training_examples
    from tigerrec.train import TrainData

    size = 8
    codes = np.stack([np.arange(20) % size, (np.arange(20) // size) % size, np.zeros(20, int), np.arange(20) % 3], 1)
    sequences = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])]
    pooled_cfg, codes_cfg = tiny_config(model={"history": "pooled"}), tiny_config()
    examples = training_examples(sequences, pooled_cfg)
    assert examples.targets.tolist() == training_examples(sequences, codes_cfg).targets.tolist() == [2, 3, 4, 5, 7, 8]
    tokenizer = Tokenizer(codes, size, 5, 6, use_user_token=True, history="pooled")
    data = TrainData(tokenizer, PrefixTrie(codes, size), examples, examples, np.array([tokenizer.user_offset] * 2))
    tokens, decoder_tokens, targets = data.batch(np.arange(len(examples)))
    assert tokens.shape == (6, 1 + 4, 4)  # [user row, up to 4 items] x 4 codes
    assert decoder_tokens.shape == targets.shape == (6, 4)  # one target per example, as with history=codes
    assert torch.equal(targets, tokenizer.item_codes[torch.tensor([2, 3, 4, 5, 7, 8])])
    cfg = ModelConfig(
        d_model=32,
        num_heads=2,
        head_dim=16,
        d_ff=64,
        encoder_layers=2,
        decoder_layers=2,
        user_buckets=5,
        dropout=0.0,
        input_dropout=0.0,
        history="pooled",
    )
    torch.manual_seed(0)
    model = TigerModel(cfg, tokenizer.vocab_size, 4, size).eval()
    assert not model.causal and model.tokens_per_item == 1
    with torch.no_grad():
        # A position is the mean of its item's code embeddings; the user row is the user token alone.
        vectors, mask = model.embed_input(tokens)
        assert torch.allclose(vectors[3, 2], model.embed(tokens[3, 2]).mean(0), atol=1e-6)  # example 3: items 1-4
        assert torch.allclose(vectors[3, 0], model.embed.weight[tokenizer.user_offset], atol=1e-6)
        assert mask[0, 0, 0].tolist() == [0, 0, -1e9, -1e9, -1e9]  # example 0: user + one item, then padding
        # Bidirectional: changing the newest item changes what the encoder holds at the oldest one.
        two = tokenizer.encoder_input(torch.tensor([[1, 2], [1, 9]]), torch.tensor([tokenizer.user_offset] * 2))
        (keys, _), *_ = model.encode(two)[0]
        assert not torch.allclose(keys[0, :, 1], keys[1, :, 1], atol=1e-4)
        assert torch.isfinite(model(tokens, decoder_tokens)).all()


def test_training_examples_are_every_prefix():
    ex = Examples.training([np.array([5, 6, 7, 8])], max_history=2)
    assert ex.targets.tolist() == [6, 7, 8]
    assert ex.histories.tolist() == [[5, -1], [5, 6], [6, 7]]
    with pytest.raises(ValueError, match="empty history"):
        Examples.from_histories([np.array([], dtype=int)], [1], [0], 3)


def test_bucketed_batches_cover_every_example_once_and_are_deterministic():
    lengths = np.random.default_rng(0).integers(1, 20, size=1000)
    batches = length_bucketed_batches(lengths, 64, seed=1, epoch=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = length_bucketed_batches(lengths, 64, seed=1, epoch=3)
    assert all((a == b).all() for a, b in zip(batches, again))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 5  # similar lengths share a batch


def test_cached_step_by_step_decoding_matches_teacher_forcing():
    codes, tokenizer, model, tokens = small_setup()
    memory_kv, memory_mask = model.encode(tokens)
    decoder_tokens = tokenizer.decoder_input(torch.from_numpy(codes[:16]))
    full = model.decode(decoder_tokens, memory_kv, memory_mask)
    cache: list = []
    steps = [model.decode(decoder_tokens[:, p : p + 1], memory_kv, memory_mask, cache) for p in range(4)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_training_windows_give_every_target_once():
    seq = np.arange(10, 35)  # 25 items; targets are items 11..34
    ex = Examples.windows([seq, np.array([7, 8])], max_history=10)
    following = ex.next_items()
    targets = sorted(int(t) for t in following.ravel() if t >= 0)
    assert targets == [8] + list(range(11, 35))
    for row in range(len(ex)):  # each target directly follows its history position
        n = ex.lengths[row]
        assert (following[row, : n - 1] == ex.histories[row, 1:n]).all()


@pytest.mark.parametrize("user_token", [True, False])
def test_causal_history_positions_never_see_later_items(user_token):
    """Row i of a causal-history batch must not depend on items after position i."""
    from tigerrec.train import TrainData

    size = 8
    codes = np.stack([np.arange(20) % size, (np.arange(20) // size) % size, np.zeros(20, int), np.arange(20) % 3], 1)
    cfg = ModelConfig(
        d_model=32,
        num_heads=2,
        head_dim=16,
        d_ff=64,
        encoder_layers=2,
        decoder_layers=2,
        user_buckets=5,
        dropout=0.0,
        history="items",
        use_user_token=user_token,
    )
    tokenizer = Tokenizer(codes, size, 5, 6, use_user_token=user_token, history="items")
    torch.manual_seed(0)
    model = TigerModel(cfg, tokenizer.vocab_size, 4, size).eval()
    seqs = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([1, 2, 3, 9, 10, 11, 12])]
    ex = Examples.windows(seqs, max_history=6)
    data = TrainData(tokenizer, PrefixTrie(codes, size), ex, ex, np.array([tokenizer.user_offset] * 2))
    tokens, decoder_tokens, targets = data.batch(np.array([0, 1]))
    assert tokens.shape == (2, 6 + user_token, 4) and decoder_tokens.shape == (12, 4) and targets.shape == (12, 4)
    with torch.no_grad():
        logits = model(tokens, decoder_tokens).view(2, 6, 4, size)
    # The sequences share their first 3 items and rows 0-1 their targets too: same logits.
    # From row 3 on the memory differs (item 4 against 9).
    assert torch.allclose(logits[0, :2], logits[1, :2], atol=1e-5)
    assert not torch.allclose(logits[0, 3], logits[1, 3], atol=1e-3)
    # The same position through inference (the history up to it) gives the same scores for the first code.
    with torch.no_grad():
        memory_kv, mask = model.encode(
            tokenizer.encoder_input(torch.tensor([[1, 2, 3]]), torch.tensor([tokenizer.user_offset]))
        )
        first = model.decode(decoder_tokens[2:3, :1], memory_kv, mask)
    assert torch.allclose(first[0, 0], logits[0, 2, 0], atol=1e-5)
    # An anonymous request without a reserved token: the user token is PAD (masked), the scores finite.
    with torch.no_grad():
        memory_kv, mask = model.encode(tokenizer.encoder_input(torch.tensor([[1, 2, 3]]), torch.tensor([PAD])))
        assert torch.isfinite(model.decode(decoder_tokens[2:3], memory_kv, mask)).all()


def test_filtered_beam_search_keeps_to_the_allowed_items_and_fills_k_when_it_can():
    codes, tokenizer, model, tokens = small_setup()
    trie = PrefixTrie(codes, 8)
    rng = np.random.default_rng(1)
    allowed = torch.from_numpy(rng.random((16, len(codes))) < 0.3)
    allowed[0] = False
    allowed[0, [5, 17, 40]] = True  # fewer allowed items than k
    out = generate(model, tokens, trie, beam_size=12, top_k=10, allowed=allowed)
    for row in range(16):
        items = out.items[row][out.items[row] >= 0].tolist()
        assert all(allowed[row, item] for item in items)
        assert len(items) == len(set(items)) == min(10, int(allowed[row].sum()))
    assert sorted(out.items[0, :3].tolist()) == [5, 17, 40] and (out.items[0, 3:] == -1).all()
    # With a beam as wide as the catalogue, beam search is exhaustive: filtering inside decoding
    # gives what filtering the full ranking afterwards gives.
    full = generate(model, tokens, trie, beam_size=len(codes), top_k=len(codes))
    inside = generate(model, tokens, trie, beam_size=len(codes), top_k=5, allowed=allowed)
    for row in range(1, 16):
        keep = allowed[row, full.items[row]]
        assert inside.items[row].tolist() == full.items[row][keep][:5].tolist()
        assert torch.allclose(inside.scores[row], full.scores[row][keep][:5], atol=1e-5)
    unfiltered = generate(
        model, tokens, trie, beam_size=12, top_k=10, allowed=torch.ones(16, len(codes), dtype=torch.bool)
    )
    assert torch.equal(unfiltered.items, generate(model, tokens, trie, beam_size=12, top_k=10).items)


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


def test_evaluation_can_keep_each_users_history_out_of_its_ranking():
    codes, tokenizer, model, _ = small_setup()
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
    codes, tokenizer, model, _ = small_setup()
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
