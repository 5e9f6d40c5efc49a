"""A run directory: its file names, what each stage was built from (fingerprints), and reading it back.

Run directory layout:
    config.json            the resolved configuration
    items.jsonl            item ids, titles, categories (so a run serves without the dataset)
    ids/                   semantic_ids.csv, quantizer.safetensors, ids_metrics.json
    fingerprint.json       what the model is trained from (dataset, Semantic IDs, settings)
    model.safetensors      best model by validation NDCG@10
    checkpoint.pt          last training state (resume)
    train_log.csv, valid_log.csv
    budget.json            how train.budget_minutes was shared out (``members.fit_to_budget``)
    members/1, ...         an ensemble's models after the first (train.members), one folder each
    item_model.safetensors the item model whose scores re-rank the beam (fusion.item_model), and
    item_model.json        what it was trained with, and how (``fusion``)
    metrics.json           test + validation metrics, timings, config
    report.html            ``tigerrec report``

A run directory never holds a stage built from other inputs than the ones it is
reused with (``check_run_dir``): each stage records a fingerprint of its inputs
(the Semantic IDs in ids/ids_metrics.json, the model in fingerprint.json), and a
run whose inputs differ stops before it writes anything, or with ``overwrite``
deletes the stale stage and everything after it and builds them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import RunConfig, show_value
from .data import Dataset
from .errors import TigerrecError
from .io import file_sha256, read_json, write_text
from .semantic_ids import IDS_FILE, SemanticIDs, has_collision_code

CONFIG_FILE = "config.json"
IDS_DIR = "ids"
IDS_METRICS = "ids_metrics.json"
QUANTIZER_FILE = "quantizer.safetensors"
ITEMS_FILE = "items.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "model.safetensors"
TRAIN_LOG = "train_log.csv"
VALID_LOG = "valid_log.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
BUDGET_FILE = "budget.json"
TARGET_RANKS_FILE = "test_target_ranks.npz"  # the test target ranks per protocol, for paired comparisons
MEMBERS_DIR = "members"  # an ensemble's models after the first (train.members), one folder each
ITEM_MODEL = "item_model.safetensors"  # fusion.item_model's weights (``fusion``)
ITEM_MODEL_RECORD = "item_model.json"  # its settings and training summary
# Everything trained from the Semantic IDs: one model, kept or deleted together.
MODEL_FILES = (
    CHECKPOINT,
    BEST_MODEL,
    TRAIN_LOG,
    VALID_LOG,
    METRICS_FILE,
    REPORT_FILE,
    FINGERPRINT_FILE,
    BUDGET_FILE,
    TARGET_RANKS_FILE,
    MEMBERS_DIR,
    ITEM_MODEL,
    ITEM_MODEL_RECORD,
)
# What the fused ranking is scored from besides the generative model: redone when the item model changes.
ITEM_MODEL_FILES = (ITEM_MODEL, ITEM_MODEL_RECORD, METRICS_FILE, REPORT_FILE, TARGET_RANKS_FILE)


MODEL_SECTIONS = ("data", "model", "train")  # the config sections the model is trained from


def item_model_settings(cfg: RunConfig) -> dict:
    """What the run's item model (``fusion.item_model``) is trained from besides the dataset and split,
    which the model's fingerprint covers."""
    return {
        "item_model": cfg.fusion.item_model,
        "sasrec": dataclasses.asdict(cfg.sasrec),
        "exclude_history": cfg.eval.exclude_history,
    }


def member_dirs(run_dir: str | Path, members: int) -> list[Path]:
    """Where each model of a run trains and keeps its best weights and logs: the run directory itself,
    then, for an ensemble (train.members), members/1, members/2, ..."""
    run_dir = Path(run_dir)
    return [run_dir] + [run_dir / MEMBERS_DIR / str(member) for member in range(1, members)]


def load_ids(ids_dir: str | Path, cfg: RunConfig) -> SemanticIDs:
    """The Semantic IDs in ``ids_dir`` made with ``cfg.ids`` (with a collision code, or RPG's without one)."""
    return SemanticIDs.load(ids_dir, cfg.ids.codebook_size, has_collision_code(cfg.ids.scheme))


def items_text(item_ids: Iterable[str], item_meta: Iterable[dict]) -> str:
    """Items as ``items.jsonl`` holds them: one JSON object per line, item_id and metadata."""
    return "".join(json.dumps({"item_id": item, **meta}) + "\n" for item, meta in zip(item_ids, item_meta))


def write_items(dataset: Dataset, path: Path) -> None:
    write_text(path, items_text(dataset.item_ids, dataset.item_meta))


def read_items(path: str | Path) -> dict[str, dict]:
    """``items.jsonl`` back as {item id: metadata}, in catalogue order."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")
    except UnicodeDecodeError as e:
        raise TigerrecError(f"{path} is not text ({e})") from None
    items = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line)
                items[str(record.pop("item_id"))] = record
            except (ValueError, KeyError, AttributeError, TypeError):
                raise TigerrecError(
                    f"{path}, line {number}: expected a JSON object with an item_id, got {line[:80]!r}"
                ) from None
    return items


# Settings that earlier releases wrote to config.json and this one no longer has, with the value that
# left each off: a run directory that recorded them so reads as the run it is.
RETIRED_SETTINGS = {
    "model": {"item_tokens": False, "recency_positions": 0},
    "train": {"ema_decay": 0.0, "label_smoothing": 0.0, "recent_repeats": 0},
    "experiment": {"guide_items": 5},  # now eval.new_item_guides
}


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was made with (``config.json`` minus the source)."""
    path = Path(run_dir) / CONFIG_FILE
    values = read_json(path)
    try:
        if not isinstance(values, dict):
            raise TigerrecError(f"expected a JSON object, got {type(values).__name__}")
        values.pop("source", None)
        for section, retired in RETIRED_SETTINGS.items():
            settings = values.get(section) if isinstance(values.get(section), dict) else {}
            for name, off in retired.items():
                if (value := settings.pop(name, off)) != off:
                    raise TigerrecError(f"trained with {section}.{name}={show_value(value)}, which this version lacks")
        return RunConfig.from_dict(values).validate()
    except TigerrecError as e:
        raise TigerrecError(f"{path}: {e}") from None


# ------------------------------------------------------------------ what each stage is built from


def items_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """The dataset's items: ids and metadata, as items.jsonl holds them."""
    return {
        "dataset.items": dataset.num_items,
        "dataset.items_sha256": _sha256(items_text(dataset.item_ids, dataset.item_meta)),
    }


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """The dataset's identity: its items and its interactions."""
    interactions = "".join(
        json.dumps([user, seq.tolist()]) + "\n" for user, seq in zip(dataset.user_ids, dataset.sequences)
    )
    return {**items_fingerprint(dataset), "dataset.interactions_sha256": _sha256(interactions)}


def ids_inputs(dataset: Dataset, cfg: RunConfig) -> dict[str, Any]:
    """What Semantic IDs are built from: the items and the text and ID settings (not the interactions)."""
    return {**items_fingerprint(dataset), **cfg.fingerprint("text", "ids")}


def model_inputs(dataset: Dataset, cfg: RunConfig, ids_dir: Path) -> dict[str, Any]:
    """What the sequence model is trained from: the dataset, the Semantic IDs in ``ids_dir`` (whichever
    settings made them) and the data, model and train settings."""
    return {
        **dataset_fingerprint(dataset),
        "semantic_ids.sha256": file_sha256(ids_dir / IDS_FILE)[:16],
        **cfg.fingerprint(*MODEL_SECTIONS),
    }


def read_ids_fingerprint(ids_dir: Path) -> dict[str, Any] | None:
    """What the Semantic IDs in ``ids_dir`` were built from; None when it holds no finished IDs."""
    metrics = read_record(ids_dir / IDS_METRICS)
    if metrics is None:
        return None
    if "fingerprint" not in metrics:
        raise TigerrecError(
            f"{ids_dir / IDS_METRICS} does not record what the Semantic IDs were built from; "
            f"delete {ids_dir} to build them again"
        )
    return metrics["fingerprint"]


def check_run_dir(run_dir: str | Path, dataset: Dataset, cfg: RunConfig, overwrite: bool = False) -> list[Path]:
    """The paths of ``run_dir`` that a run with ``dataset`` and ``cfg`` must delete before it writes.

    The Semantic IDs are stale when ids/ids_metrics.json records other items or text and ID
    settings; a trained model (checkpoint.pt, model.safetensors) when fingerprint.json records
    another dataset, other Semantic IDs or other data, model and train settings (less
    ``RESUMABLE_KEYS``, which a run may be resumed with), or when there are no IDs or no record.
    The item model (fusion.item_model) is stale when item_model.json records other settings
    (``item_model_settings``). A stale stage goes with everything after it. Without ``overwrite`` stale
    paths are an error that names the differences, raised before anything in the directory changes.
    """
    run_dir = Path(run_dir)
    ids_dir = run_dir / IDS_DIR
    differences = changed_settings(read_ids_fingerprint(ids_dir), ids_inputs(dataset, cfg))
    stale = [ids_dir] if differences else []
    problems = []
    if (run_dir / CHECKPOINT).exists() or (run_dir / BEST_MODEL).exists():
        recorded = read_record(run_dir / FINGERPRINT_FILE)
        if not ((ids_dir / IDS_METRICS).is_file() and (ids_dir / IDS_FILE).is_file()):
            problems.append(f"holds a trained model but no finished Semantic IDs ({IDS_DIR}/{IDS_METRICS})")
        elif recorded is None:
            problems.append(f"holds a trained model but no record of its settings ({FINGERPRINT_FILE})")
        else:
            differences += changed_settings(recorded, model_inputs(dataset, cfg, ids_dir))
    if differences or problems:
        stale += [run_dir / name for name in MODEL_FILES]
    else:
        recorded = read_record(run_dir / ITEM_MODEL_RECORD)
        item_model = changed_settings(recorded and recorded.get("settings"), item_model_settings(cfg))
        if item_model:
            differences += item_model
            stale += [run_dir / name for name in ITEM_MODEL_FILES]
    stale = [path for path in stale if path.exists()]
    if stale and not overwrite:
        raise TigerrecError(refusal(run_dir, list(dict.fromkeys(differences)), problems, stale))
    return stale


def read_record(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file."""
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise TigerrecError(f"{path} is not a JSON object")
    return record


def changed_settings(recorded: dict | None, current: dict) -> list[str]:
    """``key=recorded (now current)`` for each key whose value changed. Keys the record lacks are not
    compared: a setting added after the record was written defaults to what the run did."""
    if recorded is None:
        return []
    return [
        f"{key}={show_value(recorded[key])} (now {show_value(value)})"
        for key, value in current.items()
        if key in recorded and recorded[key] != value
    ]


def refusal(directory: Path, differences: list[str], problems: list[str], stale: list[Path]) -> str:
    reasons = list(problems)
    if differences:
        shown = ", ".join(differences[:8]) + (f" and {len(differences) - 8} more" if len(differences) > 8 else "")
        reasons.insert(0, f"was built with {shown}")
    deleted = ", ".join(path.name + "/" * path.is_dir() for path in stale)
    return (
        f"{directory} {' and '.join(reasons)}; pass --overwrite (Python: overwrite=True) to rebuild it, "
        f"which deletes {deleted}"
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
