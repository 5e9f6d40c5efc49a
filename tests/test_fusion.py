import math

import pytest
import torch

from tigerrec.fusion import fuse


def test_fuse_equals_the_rule_written_out():
    torch.manual_seed(0)
    item_log_probs = torch.randn(3, 12).log_softmax(1)
    item_log_probs[1, 4] = -math.inf  # e.g. a history item: it stays out
    beam_items = torch.tensor([[3, 7, 1], [4, 0, -1], [-1, -1, -1]])
    beam_scores = torch.tensor([[-0.5, -1.0, -2.5], [-0.2, -0.9, -math.inf], [-math.inf] * 3])
    weight, floor = 0.75, 1.5
    got = fuse(item_log_probs, beam_items, beam_scores, weight, floor)
    for row in range(3):
        beam = {int(i): float(s) for i, s in zip(beam_items[row], beam_scores[row]) if i >= 0 and math.isfinite(s)}
        last = min(beam.values()) if beam else 0.0
        for item in range(12):
            want = float(item_log_probs[row, item]) + weight * beam.get(item, last - floor)
            assert math.isclose(float(got[row, item]), want, rel_tol=1e-6) or (
                math.isinf(want) and math.isinf(float(got[row, item]))
            )
    # Weight 0 is the item model alone; a large weight keeps the beam's order on top.
    assert torch.equal(fuse(item_log_probs, beam_items, beam_scores, 0.0, floor), item_log_probs)
    top = fuse(item_log_probs, beam_items, beam_scores, 1000.0, floor)[0].topk(3).indices.tolist()
    assert top == [3, 7, 1]


def small_item_model(num_items=12, seed=0):
    from tigerrec.baselines import SASRec
    from tigerrec.config import SASRecConfig

    torch.manual_seed(seed)
    return SASRec(num_items, SASRecConfig(hidden=16, blocks=1, max_len=6, dropout=0.0)).eval()


@pytest.mark.parametrize("chunk", [None, 2])
def test_rerank_equals_brute_force_on_a_tiny_catalogue(chunk, monkeypatch):
    """Every item of a 15-item catalogue scored one by one by the rule, for an item model that knows the
    first 12 (the last 3 were added after training), with filters and history items the model has no row for;
    in one chunk of users, and in chunks of two (users are taken by history length, and each history is
    padded only to its chunk's longest, against one by one here)."""
    import numpy as np

    from tigerrec import fusion as fusion_module
    from tigerrec.baselines import sasrec_scores
    from tigerrec.decoding import ItemFilter
    from tigerrec.fusion import Fusion

    if chunk:
        monkeypatch.setattr(fusion_module, "rows_per_chunk", lambda num_items: chunk)

    model, catalogue, k = small_item_model(), 15, 6
    fusion = Fusion(model, weight=1.5, floor=1.0)
    histories = [np.array([0, 3, 5]), np.array([7, 13]), np.array([14]), np.array([2, 2, 9, 11, 1, 4, 8])]
    beam_items = np.array([[1, 13, 6, -1], [2, 5, 8, 9], [-1, -1, -1, -1], [3, 0, 12, 10]])
    beam_scores = np.array([[-0.3, -0.8, -1.7, -np.inf], [-0.1, -0.4, -2.0, -2.2], [-np.inf] * 4, [-0.5, -0.6, -1, -3]])
    allowed = ItemFilter(histories, [None, None, None, np.array([0, 3, 6, 7, 12])])
    items, scores = fusion.rerank(histories, beam_items, beam_scores, k, catalogue, allowed)
    for row, history in enumerate(histories):
        known = history[history < 12]  # the item model reads only the items it was trained with
        log_probs = sasrec_scores(model, [known])[0].log_softmax(0).tolist() if len(known) else [0.0] * 12
        beam = {int(i): float(s) for i, s in zip(beam_items[row], beam_scores[row]) if i >= 0 and np.isfinite(s)}
        last = min(beam.values()) if beam else 0.0
        want = {}
        for item in range(catalogue):
            if item in history or (allowed.only[row] is not None and item not in allowed.only[row]):
                continue
            if item >= 12 and len(known):  # no row in the item model: out of a fused list
                continue
            item_score = log_probs[item] if item < 12 else 0.0
            want[item] = item_score + 1.5 * beam.get(item, last - 1.0)
        best = sorted(want.values(), reverse=True)[:k]  # ties (a history the model knows nothing of) in any order
        got = [int(i) for i in items[row] if i >= 0]
        assert len(got) == len(set(got)) == len(best), row
        assert np.allclose([want[i] for i in got], best, atol=1e-5) and np.allclose(scores[row, : len(best)], best)
        assert (items[row, len(best) :] == -1).all() and np.isneginf(scores[row, len(best) :]).all()
