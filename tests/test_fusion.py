import math

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
