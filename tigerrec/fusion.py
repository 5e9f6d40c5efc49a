"""Generative candidates re-scored by an item-ID model: TIGER's beam summed with SASRec's scores.

TIGER ranks the items of its beam by the log-probability of their Semantic IDs; SASRec (an item-ID
model, ``baselines.SASRec``) gives a log-softmax over the whole catalogue. The fused score of an item is

    SASRec log-probability + weight x TIGER log-probability

where an item outside TIGER's beam takes, in place of its unknown TIGER log-probability, the beam's
last one less ``floor``. ``weight`` 0 is SASRec alone; a large weight keeps TIGER's order and lets
SASRec break ties and fill the list below the beam.
"""

from __future__ import annotations

import torch


def fuse(
    item_log_probs: torch.Tensor, beam_items: torch.Tensor, beam_scores: torch.Tensor, weight: float, floor: float
) -> torch.Tensor:
    """(N, items) fused scores from an item model's (N, items) log-probabilities and a beam's items and
    log-probabilities (N, B; item -1 or score -inf: no item). Items the item model rules out (-inf)
    stay out."""
    in_beam = (beam_items >= 0) & torch.isfinite(beam_scores)
    last = torch.where(in_beam, beam_scores, torch.inf).min(1).values
    last = torch.where(torch.isfinite(last), last, 0.0)  # an empty beam: every item at the same floor
    below = (last - floor)[:, None]
    fused = item_log_probs + weight * below
    boost = torch.where(in_beam, weight * (beam_scores - below), 0.0)
    return fused.scatter_add(1, beam_items.clamp(min=0), boost)
