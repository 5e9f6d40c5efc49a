"""TIGER's model: cached decoding, pooled and causal histories, and the ensemble of several models."""

import numpy as np
import pytest
import torch
from conftest import small_tiger, tiny_config

from tigerrec.config import ModelConfig
from tigerrec.decoding import PrefixTrie, generate
from tigerrec.model import TigerEnsemble, TigerModel
from tigerrec.sequences import PAD, Examples, Tokenizer


def test_ensemble_scores_each_item_by_the_members_mean_log_probabilities_at_every_step():
    codes, tokenizer, first, tokens = small_tiger()
    second = small_tiger(seed=1)[2]
    ensemble = TigerEnsemble([first, second])
    trie = PrefixTrie(codes, 8)
    out = generate(ensemble, tokens[:3], trie, beam_size=60, top_k=60)  # exhaustive: every item scored
    decoder_tokens = tokenizer.decoder_input(torch.from_numpy(codes))
    # The last code is renormalised over the last codes of the items that share the item's prefix.
    siblings = torch.from_numpy((codes[:, None, :3] == codes[None, :, :3]).all(-1))  # (item, item)
    last_open = torch.zeros(len(codes), 8, dtype=torch.bool)
    last_open[torch.nonzero(siblings)[:, 0], torch.from_numpy(codes[:, 3])[torch.nonzero(siblings)[:, 1]]] = True
    assert (siblings.sum(1) == 1).any() and (siblings.sum(1) > 1).any()  # both kinds of prefix occur
    for row in range(3):
        inputs = tokens[row : row + 1].expand(len(codes), -1)
        mean = torch.stack([m(inputs, decoder_tokens).log_softmax(-1) for m in (first, second)]).mean(0).log_softmax(-1)
        mean[:, 3] = mean[:, 3].masked_fill(~last_open, float("-inf")).log_softmax(-1)
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


def test_cached_step_by_step_decoding_matches_teacher_forcing():
    codes, tokenizer, model, tokens = small_tiger()
    memory_kv, memory_mask = model.encode(tokens)
    decoder_tokens = tokenizer.decoder_input(torch.from_numpy(codes[:16]))
    full = model.decode(decoder_tokens, memory_kv, memory_mask)
    cache: list = []
    steps = [model.decode(decoder_tokens[:, p : p + 1], memory_kv, memory_mask, cache) for p in range(4)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


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
