import numpy as np
import pytest

from tigerrec.decoding import ItemFilter
from tigerrec.new_items import (
    VECTORS_FILE,
    guided_rank,
    load_item_vectors,
    rank_candidates,
    save_item_vectors,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _brute_force(vectors, histories, guides, guide_scores, candidates, allowed, pull, k, max_history):
    """The guided rule written out row by row, in float64."""
    items, scores = [], []
    for row, history in enumerate(histories):
        past = _unit(_unit(vectors[history[-max_history:]]).mean(0))
        valid = guides[row] >= 0
        weights = np.exp(guide_scores[row][valid] - guide_scores[row][valid].max())
        ahead = _unit((weights[:, None] / weights.sum() * _unit(vectors[guides[row][valid]])).sum(0))
        profile = (1 - pull) * past + pull * ahead
        only = allowed.only[row]
        keep = [c for c in candidates if c not in allowed.excluded[row] and (only is None or c in only)]
        cosine = {c: float(_unit(vectors[c]) @ profile) for c in keep}
        best = sorted(keep, key=lambda c: -cosine[c])[:k]
        items.append(best + [-1] * (k - len(best)))
        scores.append([cosine[c] for c in best] + [-np.inf] * (k - len(best)))
    return np.array(items), np.array(scores)


def test_guided_rank_equals_the_rule_written_out():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    histories = [rng.choice(30, size=n, replace=False) for n in (1, 3, 7, 25)]
    guides = rng.choice(30, size=(4, 3))
    guides[1, 2] = -1  # fewer guides than asked: the padding has no weight
    guide_scores = np.log(rng.dirichlet(np.ones(3), size=4))
    candidates = np.arange(25, 40)  # the new items, some of them in a history (excluded there)
    histories[3] = np.concatenate([histories[3], [26, 27]])
    allowed = ItemFilter(histories, [None, None, np.array([30, 31, 32, 5]), None])
    for pull in (0.0, 0.25, 1.0):
        got = guided_rank(vectors, histories, guides, guide_scores, candidates, allowed, pull, 6, 20)
        want = _brute_force(vectors, histories, guides, guide_scores, candidates, allowed, pull, 6, 20)
        assert (got[0] == want[0]).all()
        assert got[1] == pytest.approx(want[1], abs=1e-5)
    # Row 2 may only hold 30, 31 and 32 (5 is no candidate): three items, then padding.
    assert sorted(got[0][2, :3]) == [30, 31, 32] and (got[0][2, 3:] == -1).all()
    assert not np.isin(got[0][3], [26, 27]).any()


def test_rank_candidates_pads_when_few_pass():
    vectors = np.eye(4, dtype=np.float32)
    items, scores = rank_candidates(vectors, np.array([[0.0, 0.0, 1.0, 0.5]]), np.array([2, 3]), ItemFilter([[3]]), 3)
    assert items.tolist() == [[2, -1, -1]] and scores[0, 0] == pytest.approx(1.0) and np.isinf(scores[0, 1:]).all()


def test_item_vectors_round_trip(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    save_item_vectors(tmp_path, vectors)
    loaded = load_item_vectors(tmp_path, 5)
    assert loaded.dtype == np.float16 and loaded == pytest.approx(vectors, abs=1e-2)
    # Rows past the catalogue (an addition that died before its IDs) are ignored; too few rows are no vectors.
    assert len(load_item_vectors(tmp_path, 4)) == 4
    assert load_item_vectors(tmp_path, 6) is None
    (tmp_path / VECTORS_FILE).unlink()
    assert load_item_vectors(tmp_path, 5) is None
