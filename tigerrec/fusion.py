"""Generative candidates re-scored by an item-ID model: TIGER's beam summed with SASRec's scores.

TIGER ranks the items of its beam by the log-probability of their Semantic IDs; SASRec (an item-ID
model, ``baselines.SASRec``) gives a log-softmax over the whole catalogue. The fused score of an item is

    SASRec log-probability + weight x TIGER log-probability

where an item outside TIGER's beam takes, in place of its unknown TIGER log-probability, the beam's
last one less ``floor``. ``weight`` 0 is SASRec alone; a large weight keeps TIGER's order and lets
SASRec break ties and fill the list below the beam.

A run with ``fusion.item_model=sasrec`` trains the item model after the generative one (``train_item_model``)
and keeps it beside it; evaluation and serving then rank with ``Fusion.rerank``. Items added after training
(``add-items``) have no row in the item model: they reach a fused list through ``reserve_new`` slots, which
the guided rule fills (``new_items``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .baselines import SASRec, rows_per_chunk, sasrec_scores, train_sasrec
from .config import RunConfig
from .data import Dataset, leave_one_out
from .decoding import ItemFilter
from .device import use_bf16
from .errors import TigerrecError, brief
from .io import write_json
from .model import save_model
from .rundir import ITEM_MODEL, ITEM_MODEL_RECORD, item_model_settings, read_record

log = logging.getLogger(__name__)


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


class Fusion:
    """A trained item model with the run's fusion settings: re-ranks a generative model's beams."""

    def __init__(self, item_model: SASRec, weight: float, floor: float, bf16: bool = False):
        self.item_model = item_model.eval()
        self.weight, self.floor, self.bf16 = weight, floor, bf16

    @property
    def num_items(self) -> int:
        """The items the item model was trained with (the catalogue's first ones)."""
        return self.item_model.items.num_embeddings - 1

    def log_probs(self, histories: list[np.ndarray], num_items: int) -> torch.Tensor:
        """(N, num_items) the item model's log-softmax after each history (CPU, float32); items it has no
        row for are -inf and left out of the histories it reads; a history of none of its items, of which
        it knows nothing, scores every item alike."""
        histories = [np.asarray(history)[np.asarray(history) < self.num_items] for history in histories]
        scores = torch.zeros(len(histories), num_items)
        known = [row for row, history in enumerate(histories) if len(history)]
        if known:
            rows = sasrec_scores(self.item_model, [histories[row] for row in known], self.bf16).log_softmax(1).cpu()
            scores[known, : self.num_items] = rows[:, :num_items]
            scores[known, self.num_items :] = -torch.inf
        return scores

    def rerank(
        self,
        histories: list[np.ndarray],
        beam_items: np.ndarray,
        beam_scores: np.ndarray,
        k: int,
        num_items: int,
        allowed: ItemFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` items (N, k) of each row by fused score, and those scores (-1 and -inf where
        fewer items qualify). ``histories`` are the rows' items, oldest first (the item model reads its
        last ``sasrec.max_len``); ``beam_items`` / ``beam_scores`` (N, B) the generative model's beam, already
        within ``allowed`` (``decoding.ItemFilter``), which the fused list keeps to as well."""
        items = np.full((len(histories), k), -1, dtype=np.int64)
        scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        step = rows_per_chunk(num_items)
        by_length = np.argsort([len(history) for history in histories], kind="stable")  # chunks of like lengths
        for begin in range(0, len(histories), step):
            rows = by_length[begin : begin + step]
            log_probs = self.log_probs([histories[row] for row in rows], num_items)
            if allowed is not None:
                log_probs = log_probs.masked_fill(~allowed.rows(rows).mask(num_items), -torch.inf)
            fused = fuse(
                log_probs,
                torch.from_numpy(beam_items[rows]).long(),
                torch.from_numpy(beam_scores[rows]).float(),
                self.weight,
                self.floor,
            )
            top = fused.topk(min(k, num_items), 1)
            found = torch.isfinite(top.values)
            items[rows, : top.indices.shape[1]] = torch.where(found, top.indices, -1).numpy()
            scores[rows, : top.values.shape[1]] = top.values.numpy()
        return items, scores


def train_item_model(dataset: Dataset, cfg: RunConfig, run_dir: str | Path, device: str) -> tuple[dict, bool]:
    """Train the run's item model (``fusion.item_model``) on the run's split, picked by the validation
    metric TIGER's checkpoints are picked by, and keep it in ``run_dir``; one the directory already holds,
    trained with the same settings (``rundir.item_model_settings``), is reused. Returns its training summary
    and whether it was trained now."""
    run_dir = Path(run_dir)
    settings = item_model_settings(cfg)
    recorded = _trained_with(run_dir, settings, dataset.num_items)
    if recorded is not None:
        log.info("reusing the item model in %s", run_dir / ITEM_MODEL)
        return recorded, False
    log.info("training the item model (fusion.item_model=%s) for fused ranking", cfg.fusion.item_model)
    split = leave_one_out(dataset, cfg.data.backtest)
    model, summary = train_sasrec(
        split.train,
        dataset.num_items,
        split.valid_history,
        split.valid_target,
        cfg.sasrec,
        device,
        exclude_history=cfg.eval.exclude_history,
    )
    save_model(model, run_dir / ITEM_MODEL)
    # The record last: a directory with weights but no record trains them again.
    write_json(run_dir / ITEM_MODEL_RECORD, {"settings": settings, "items": dataset.num_items, "training": summary})
    return summary, True


def load_item_model(run_dir: str | Path, cfg: RunConfig, device: str = "cpu") -> SASRec:
    """The item model a run trained (``train_item_model``), on ``device``."""
    path = Path(run_dir) / ITEM_MODEL
    if not path.is_file():
        raise TigerrecError(
            f"{path} is missing: the run ranks with an item model (fusion.item_model={cfg.fusion.item_model}); "
            "finish the run with `tigerrec run`"
        )
    try:
        state = load_file(str(path))
    except SafetensorError as e:
        raise TigerrecError(f"{path} is corrupt ({brief(e)})") from None
    model = SASRec(state["items.weight"].shape[0] - 1, cfg.sasrec)
    model.load_state_dict(state)
    return model.to(device).eval()


def reusable_item_model(run_dir: str | Path, cfg: RunConfig, num_items: int) -> dict | None:
    """The training summary of the item model in ``run_dir`` when it was trained with ``cfg``'s settings on
    a catalogue of ``num_items`` (the SASRec baseline is then that model, not trained twice), else None."""
    return _trained_with(Path(run_dir), {**item_model_settings(cfg), "item_model": "sasrec"}, num_items)


def _trained_with(run_dir: Path, settings: dict, num_items: int) -> dict | None:
    """The training summary of the item model in ``run_dir`` if it was trained with ``settings`` on
    ``num_items`` items (``item_model.json`` says so and its weights are there), else None."""
    record = read_record(run_dir / ITEM_MODEL_RECORD)
    if record is None or not (run_dir / ITEM_MODEL).is_file():
        return None
    return record["training"] if record.get("settings") == settings and record.get("items") == num_items else None


def load_fusion(run_dir: str | Path, cfg: RunConfig, device: str = "cpu") -> Fusion | None:
    """The run's ``Fusion`` (None when its config fuses no item model), on ``device``."""
    if cfg.fusion.item_model == "none":
        return None
    model = load_item_model(run_dir, cfg, device)
    return Fusion(model, cfg.fusion.weight, cfg.fusion.floor, use_bf16(device, cfg.sasrec.bf16))
