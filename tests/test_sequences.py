"""From item sequences to tokens: the vocabulary, the anonymous user token, training examples and batches."""

import numpy as np
import pytest
import torch

from tigerrec.decoding import PrefixTrie
from tigerrec.sequences import PAD, Examples, Tokenizer, length_bucketed_batches, user_bucket


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


def test_training_examples_are_every_prefix():
    ex = Examples.training([np.array([5, 6, 7, 8])], max_history=2)
    assert ex.targets.tolist() == [6, 7, 8]
    assert ex.histories.tolist() == [[5, -1], [5, 6], [6, 7]]
    with pytest.raises(ValueError, match="empty history"):
        Examples.from_histories([np.array([], dtype=int)], [1], [0], 3)


def test_training_examples_in_chunks_equal_the_prefixes_taken_one_by_one():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 100, size=rng.integers(1, 30)) for _ in range(300)]
    built = Examples.training(sequences, max_history=7, chunk=100)
    histories, targets, users = [], [], []
    for user, seq in enumerate(sequences):
        for t in range(1, len(seq)):
            histories.append(seq[max(0, t - 7) : t])
            targets.append(seq[t])
            users.append(user)
    expected = Examples.from_histories(histories, targets, users, 7)
    for field in ("histories", "lengths", "targets", "users"):
        assert np.array_equal(getattr(built, field), getattr(expected, field)), field


def test_bucketed_batches_cover_every_example_once_and_are_deterministic():
    lengths = np.random.default_rng(0).integers(1, 20, size=1000)
    batches = length_bucketed_batches(lengths, 64, seed=1, epoch=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = length_bucketed_batches(lengths, 64, seed=1, epoch=3)
    assert all((a == b).all() for a, b in zip(batches, again))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 5  # similar lengths share a batch


def test_training_windows_give_every_target_once():
    seq = np.arange(10, 35)  # 25 items; targets are items 11..34
    ex = Examples.windows([seq, np.array([7, 8])], max_history=10)
    following = ex.next_items()
    targets = sorted(int(t) for t in following.ravel() if t >= 0)
    assert targets == [8] + list(range(11, 35))
    for row in range(len(ex)):  # each target directly follows its history position
        n = ex.lengths[row]
        assert (following[row, : n - 1] == ex.histories[row, 1:n]).all()
