"""The models a run trains: how many minutes training gets within the run's end-to-end budget,
the ensemble's members trained one after another, and the trained ones loaded as one model.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from .config import RunConfig, show_value
from .errors import TigerrecError, brief
from .io import write_json
from .model import SequenceModel
from .registry import initial_model
from .rundir import BEST_MODEL, BUDGET_FILE, CHECKPOINT, CONFIG_FILE, member_dirs, read_record
from .sequences import Examples
from .train import (
    TrainData,
    distributed_context,
    evaluate_examples,
    from_rank0,
    train,
    training_device,
    validation_examples,
)

log = logging.getLogger(__name__)

FORECAST_MARGIN = 1.2


def forecast_eval_seconds(model: SequenceModel, data: TrainData, test: Examples, cfg: RunConfig) -> float:
    """Seconds that decoding after training will take: every validation and test example, and the
    validation subset once more (the last validation of training runs after its clock has stopped).
    Timed on one decoding batch of validation examples (smaller batches cost more per example) with
    the model as it is, on the training device: beam search costs the same whatever the weights.
    Evaluation batches examples of similar history length, so its typical batch is short: the timed
    batch holds the examples nearest the mean length, not a random few padded to the longest.
    The faster of two passes, as the first also warms up kernels and allocator, and a fifth more
    for margin. An ensemble (train.members) decodes with every member: as many times the cost."""
    lengths = data.valid.lengths
    nearest_mean = np.argsort(np.abs(lengths - lengths.mean()), kind="stable")[: cfg.eval.batch_size]
    sample = data.valid.subset(np.sort(nearest_mean))
    model.to(training_device())
    seconds = min(evaluate_examples(model, data, sample, cfg, "time decoding")["seconds"] for _ in range(2))
    decoded = len(data.valid) + len(test) + len(validation_examples(data.valid, cfg.train))
    return FORECAST_MARGIN * seconds / len(sample) * decoded * cfg.train.members


def fit_to_budget(
    cfg: RunConfig, run_dir: Path, model: SequenceModel, data: TrainData, test: Examples, started: float
) -> tuple[RunConfig, dict]:
    """``cfg`` with ``train.max_minutes`` cut so that the run ends within ``train.budget_minutes``, and the
    ``budget.json`` record of it: what the time since ``started`` (``time.perf_counter()`` at the run's
    start: loading, Semantic IDs, the forecast itself) leaves, less the forecast of the final evaluation.
    A run directory that began training under the same budget keeps the minutes it began with
    (``budget.json``), so a resumed run keeps its schedule and a finished run its metrics."""
    budget = cfg.train.budget_minutes
    recorded = read_record(run_dir / BUDGET_FILE)
    if recorded is None or recorded.get("budget_minutes") != budget or not (run_dir / CHECKPOINT).exists():
        rank, world = distributed_context()
        device = training_device()
        # Process 0 decodes at the end, so its forecast is everyone's.
        eval_seconds = from_rank0(forecast_eval_seconds(model, data, test, cfg) if rank == 0 else 0.0, world, device)
        spent_seconds = from_rank0(time.perf_counter() - started, world, device)
        minutes = budget - (spent_seconds + eval_seconds) / 60
        if minutes <= 0:
            raise TigerrecError(
                f"train.budget_minutes={show_value(budget)} leaves no time to train: loading, Semantic "
                f"IDs and timing the decoder took {spent_seconds / 60:.1f} minutes and the final evaluation "
                f"needs about "
                f"{eval_seconds / 60:.1f}; raise the budget (the IDs are kept for the next run)"
            )
        minutes = round(min(minutes, cfg.train.max_minutes) if cfg.train.max_minutes else minutes, 3)
        recorded = {
            "budget_minutes": budget,
            "spent_seconds": round(spent_seconds, 3),
            "final_eval_forecast_seconds": round(eval_seconds, 3),
            "train_minutes": minutes,
        }
        if rank == 0:
            write_json(run_dir / BUDGET_FILE, recorded)
    minutes = float(recorded["train_minutes"])
    log.info("budget of %s minutes end to end: training for at most %.1f minutes", show_value(budget), minutes)
    return replace(cfg, train=replace(cfg.train, max_minutes=minutes)), recorded


def train_members(model: SequenceModel, data: TrainData, cfg: RunConfig, run_dir: Path, ids_dir: Path) -> list[dict]:
    """Train ``model``, and with train.members > 1 the ensemble's other members, each from its own
    seed (train.seed + its number) in its own folder (``member_dirs``); returns the summary of each
    member trained (``train``). Members that finished are not trained again.

    Under train.max_minutes each member trains on what the ones before it left, and a member trains
    only if that is at least train.member_min_share of the first one's training time: the first model
    is never cut short for an ensemble. Where the step or pass budget ends training first (a fast CPU)
    every member gets its own; where the minutes do (a slower CPU) a later member's schedule, cooldown
    included, is compressed into the minutes left, and where they are fewer than that share the run is
    the first model alone."""
    members, minutes = cfg.train.members, cfg.train.max_minutes
    _, world = distributed_context()
    summaries: list[dict] = []
    for member, directory in enumerate(member_dirs(run_dir, members)):
        # Process 0's clock decides for every process, so all of them train the same members.
        spent = from_rank0(sum(s["train_seconds"] for s in summaries) / 60, world, training_device())
        left = minutes - spent if minutes else 0.0
        first = from_rank0(summaries[0]["train_seconds"] / 60, world, training_device()) if summaries else 0.0
        if member and minutes and (left <= 0 or left < cfg.train.member_min_share * first):
            log.warning(
                "ensemble member %d of %d not trained: train.max_minutes leaves %.1f minutes, less than %g of "
                "the %.1f the first member took; ranking with %d",
                member + 1,
                members,
                left,
                cfg.train.member_min_share,
                first,
                member,
            )
            break
        member_cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + member, max_minutes=round(left, 3)))
        member_model = model if member == 0 else initial_model(data.tokenizer, member_cfg, ids_dir)
        if members > 1:
            log.info("ensemble member %d of %d (seed %d) in %s", member + 1, members, member_cfg.train.seed, directory)
        summaries.append(train(member_model, data, member_cfg.train, cfg.eval, directory))
    return summaries


def load_best_model(model: SequenceModel, run_dir: str | Path, members: int = 1) -> SequenceModel:
    """Load the checkpoint selected by validation into ``model``, on the device the model is on. With
    ``members`` > 1 (the run's train.members) the other members' go into copies of ``model``, and the
    result is their ensemble: of the members that were trained (``train_members`` trains one only when
    the budget leaves it time), which are those with a model in their folder."""
    directories = member_dirs(run_dir, members)
    trained = next((n for n, d in enumerate(directories) if n and not (d / BEST_MODEL).is_file()), members)
    if trained < members:
        log.info("%s: %d of train.members=%d models were trained; ranking with those", run_dir, trained, members)
    models = [model] + [copy.deepcopy(model) for _ in range(trained - 1)]
    for member, directory in zip(models, directories):
        path = directory / BEST_MODEL
        try:
            member.load(path)
        except SafetensorError as e:
            raise TigerrecError(f"{path} is corrupt ({brief(e)})") from None
        except RuntimeError as e:  # names, shapes: a model of other settings than config.json's
            raise TigerrecError(f"{path} does not fit the model that {CONFIG_FILE} describes ({brief(e)})") from None
    return (model if trained == 1 else model.ensemble(models)).eval()
