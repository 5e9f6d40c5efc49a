"""The whole pipeline, stage by stage, reusing the stages a run directory already holds.

dataset -> item sentences -> embeddings -> Semantic IDs -> sequence model -> test metrics

Run directory layout:
    config.json            the resolved configuration
    items.jsonl            item ids, titles, categories (so a run serves without the dataset)
    ids/                   semantic_ids.csv, quantizer.safetensors, ids_metrics.json
    fingerprint.json       what the model is trained from (dataset, Semantic IDs, settings)
    model.safetensors      best model by validation NDCG@10
    checkpoint.pt          last training state (resume)
    train_log.csv, valid_log.csv
    metrics.json           test + validation metrics, timings, config

A run directory never holds a stage built from other inputs than the ones it is
reused with (``check_run_dir``): each stage records a fingerprint of its inputs
(the Semantic IDs in ids/ids_metrics.json, the model in fingerprint.json), and a
run whose inputs differ stops before it writes anything, or with ``overwrite``
deletes the stale stage and everything after it and builds them again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import resource
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import CODEBOOK_INITS, RunConfig, fingerprint, show_value
from .data import Dataset, Split, leave_one_out, load_dataset
from .decoding import PrefixTrie, configure_decoding
from .device import provenance, use_bf16
from .errors import TigerrecError, brief
from .evaluate import item_counts
from .io import file_sha256, read_json, write_json, write_text
from .model import CAUSAL_HISTORIES, SequenceModel, TigerEnsemble, TigerModel
from .quantize import load_quantizer, make_quantizer
from .rpg import RPGModel
from .semantic_ids import IDS_FILE, SemanticIDs, has_collision_code
from .sequences import Examples, Tokenizer
from .text import TextEncoder, item_sentence, read_titles, with_titles
from .train import (
    BEST_MODEL,
    CHECKPOINT,
    TRAIN_LOG,
    VALID_LOG,
    TrainData,
    distributed_context,
    evaluate_data,
    from_rank0,
    train,
    training_device,
    validation_examples,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
IDS_DIR = "ids"
IDS_METRICS = "ids_metrics.json"
QUANTIZER_FILE = "quantizer.safetensors"
ITEMS_FILE = "items.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
BUDGET_FILE = "budget.json"
# Everything trained from the Semantic IDs: one model, kept or deleted together.
MEMBERS_DIR = "members"  # an ensemble's models after the first (train.members), one folder each
MODEL_FILES = (
    CHECKPOINT,
    BEST_MODEL,
    TRAIN_LOG,
    VALID_LOG,
    METRICS_FILE,
    REPORT_FILE,
    FINGERPRINT_FILE,
    BUDGET_FILE,
    MEMBERS_DIR,
)
MODEL_SECTIONS = ("data", "model", "train")  # the config sections the model is trained from


def embed_items(dataset: Dataset, cfg: RunConfig) -> tuple[np.ndarray, str, float]:
    """Sentence embeddings of every item (cached on disk by encoder + texts)."""
    start = time.perf_counter()
    item_meta = dataset.item_meta
    if cfg.text.titles_file:
        item_meta = with_titles(dataset.item_ids, item_meta, read_titles(cfg.text.titles_file))
    texts = [item_sentence(meta, cfg.text.template) for meta in item_meta]
    empty = sum(1 for t in texts if not t)
    if empty:
        log.warning("%d of %d items have no text; they will share an embedding", empty, len(texts))
    encoder = TextEncoder(cfg.text.encoder, cfg.text.batch_size)
    return encoder.encode(texts), encoder.label, time.perf_counter() - start


def build_semantic_ids(dataset: Dataset, cfg: RunConfig, out_dir: str | Path, overwrite: bool = False) -> SemanticIDs:
    """Embeddings -> quantiser -> unique Semantic IDs, written to ``out_dir``.

    Reused when ``out_dir`` already holds IDs built from the same inputs (``ids_inputs``). IDs
    built from other inputs are an error naming the differences, or with ``overwrite`` are replaced.
    """
    out_dir = Path(out_dir)
    inputs = ids_inputs(dataset, cfg)
    metrics_path = out_dir / IDS_METRICS
    recorded = read_ids_fingerprint(out_dir)
    if recorded is not None:
        differences = _differences(recorded, inputs)
        if not differences:
            log.info("reusing Semantic IDs in %s", out_dir)
            return load_ids(out_dir, cfg)
        if not overwrite:
            replaced = [path for path in (out_dir / IDS_FILE, out_dir / QUANTIZER_FILE, metrics_path) if path.exists()]
            raise TigerrecError(_refusal(out_dir, differences, [], replaced))
        metrics_path.unlink()  # until the new IDs are complete the directory holds none

    embeddings, encoder_label, embed_seconds = embed_items(dataset, cfg)
    start = time.perf_counter()
    quantizer = make_quantizer(cfg.ids.scheme, embeddings.shape[1], cfg.ids).fit(embeddings)
    fit_seconds = time.perf_counter() - start
    ids = SemanticIDs.from_codes(
        dataset.item_ids, quantizer.encode(embeddings), cfg.ids.codebook_size, has_collision_code(cfg.ids.scheme)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer.save(out_dir / QUANTIZER_FILE)
    ids.save(out_dir)
    metrics = {
        **ids.metrics(),
        "scheme": cfg.ids.scheme,
        "encoder": encoder_label,
        "embedding_dim": int(embeddings.shape[1]),
        "reconstruction": quantizer.history[-1].get("reconstruction") if quantizer.history else None,
        "embed_seconds": round(embed_seconds, 1),
        "quantizer_seconds": round(fit_seconds, 1),
        "history": quantizer.history,
        "fingerprint": inputs,
    }
    write_json(metrics_path, metrics)
    log.info(
        "Semantic IDs: utilisation %s, %s %.1f%%, largest collision group %d",
        metrics["utilization"],
        "unique prefixes" if ids.collision_code else "items with an ID of their own",
        100 * metrics["unique_prefix_share"],
        metrics["max_collision_group"],
    )
    return ids


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


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was made with (``config.json`` minus the source)."""
    path = Path(run_dir) / CONFIG_FILE
    values = read_json(path)
    try:
        if not isinstance(values, dict):
            raise TigerrecError(f"expected a JSON object, got {type(values).__name__}")
        values.pop("source", None)
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
    metrics = _read_record(ids_dir / IDS_METRICS)
    if metrics is None:
        return None
    if "fingerprint" in metrics:
        return metrics["fingerprint"]
    # Made before fingerprints: the text and ID sections and the item count, under "settings".
    settings = metrics.get("settings") if isinstance(metrics.get("settings"), dict) else {}
    recorded = fingerprint(settings, ("text", "ids"))
    if "items" in settings:
        recorded["dataset.items"] = settings["items"]
    return recorded


def check_run_dir(run_dir: str | Path, dataset: Dataset, cfg: RunConfig, overwrite: bool = False) -> list[Path]:
    """The paths of ``run_dir`` that a run with ``dataset`` and ``cfg`` must delete before it writes.

    The Semantic IDs are stale when ids/ids_metrics.json records other items or text and ID
    settings; a trained model (checkpoint.pt, model.safetensors) when fingerprint.json records
    another dataset, other Semantic IDs or other data, model and train settings (less
    ``RESUMABLE_KEYS``, which a run may be resumed with), or when there are no IDs or no record.
    A stale stage goes with everything after it. Without ``overwrite`` stale paths are an error
    that names the differences, raised before anything in the directory changes.

    Directories from before fingerprints: their config.json stands in for fingerprint.json, and
    keys a record lacks (the dataset hashes) are unknown, so not compared.
    """
    run_dir = Path(run_dir)
    ids_dir = run_dir / IDS_DIR
    differences = _differences(read_ids_fingerprint(ids_dir), ids_inputs(dataset, cfg))
    stale = [ids_dir] if differences else []
    problems = []
    if (run_dir / CHECKPOINT).exists() or (run_dir / BEST_MODEL).exists():
        recorded = _read_record(run_dir / FINGERPRINT_FILE)
        if recorded is None:  # older run directories: the settings in config.json
            config = _read_record(run_dir / CONFIG_FILE)
            recorded = None if config is None else fingerprint(config, MODEL_SECTIONS)
        if not ((ids_dir / IDS_METRICS).is_file() and (ids_dir / IDS_FILE).is_file()):
            problems.append(f"holds a trained model but no finished Semantic IDs ({IDS_DIR}/{IDS_METRICS})")
        elif recorded is None:
            problems.append(
                f"holds a trained model but no record of its settings ({FINGERPRINT_FILE} or {CONFIG_FILE})"
            )
        else:
            differences += _differences(recorded, model_inputs(dataset, cfg, ids_dir))
    if differences or problems:
        stale += [run_dir / name for name in MODEL_FILES]
    stale = [path for path in stale if path.exists()]
    if stale and not overwrite:
        raise TigerrecError(_refusal(run_dir, list(dict.fromkeys(differences)), problems, stale))
    return stale


def _read_record(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file."""
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise TigerrecError(f"{path} is not a JSON object")
    return record


def _differences(recorded: dict | None, current: dict) -> list[str]:
    """``key=recorded (now current)`` for each key whose value changed; keys the record lacks are not compared."""
    if recorded is None:
        return []
    return [
        f"{key}={show_value(recorded[key])} (now {show_value(value)})"
        for key, value in current.items()
        if key in recorded and recorded[key] != value
    ]


def _refusal(directory: Path, differences: list[str], problems: list[str], stale: list[Path]) -> str:
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


def make_tokenizer(ids: SemanticIDs, cfg: RunConfig, trained_items: int | None = None) -> Tokenizer:
    """The tokenizer for ``ids``; with ``model.item_tokens`` the first ``trained_items`` items (default:
    all) have a token of their own, so IDs added after training leave the vocabulary as it was."""
    item_tokens = (len(ids.item_ids) if trained_items is None else trained_items) if cfg.model.item_tokens else 0
    return Tokenizer(
        ids.codes,
        ids.codebook_size,
        cfg.model.user_buckets,
        cfg.data.max_history,
        cfg.model.use_user_token,
        history=cfg.model.history,
        item_tokens=item_tokens,
        anonymous_token=cfg.model.anonymous_share > 0,
    )


def make_model(tokenizer: Tokenizer, cfg: RunConfig) -> SequenceModel:
    """A freshly initialised sequence model of kind ``model.kind`` sized for ``tokenizer``'s vocabulary and
    IDs (RPG also keeps the IDs of every item, the catalogue it scores)."""
    if cfg.model.kind == "rpg":
        return RPGModel(cfg.model, tokenizer.vocab_size, tokenizer.item_codes, tokenizer.codebook_size)
    return TigerModel(cfg.model, tokenizer.vocab_size, tokenizer.id_length, tokenizer.codebook_size)


def init_code_embeddings(
    model: TigerModel, tokenizer: Tokenizer, codebooks: torch.Tensor, std: float, head: bool = False
) -> None:
    """Start each level's code tokens from the quantiser's codewords (levels, codebook_size, dim): centred,
    carried to d_model by one fixed random projection per level and scaled to ``std``, so the geometry
    of the codewords (which codes are close) is what the model starts from (ModelConfig.embed_init).
    With ``head`` the output rows of those codes start from the same vectors at the head's usual scale,
    as if input and output embeddings were tied."""
    generator = torch.Generator().manual_seed(0)
    d_model = model.embed.weight.shape[1]
    with torch.no_grad():
        for level, codewords in enumerate(codebooks.float().cpu()):
            projected = (codewords - codewords.mean(0)) @ torch.randn(codewords.shape[1], d_model, generator=generator)
            projected = projected / projected.std()
            rows = tokenizer.code_tokens(level).to(model.embed.weight.device)
            model.embed.weight[rows] = (projected * std).to(model.embed.weight)
            if head:
                model.head[level] = (projected * d_model**-0.5).to(model.head)


def held_out_examples(split: Split, max_history: int) -> tuple[Examples, Examples]:
    """Validation and test examples of every user (the leave-one-out targets), with their whole
    histories for ranking without them (eval.exclude_history), as serving and the baselines do."""
    users = np.arange(len(split.train))
    valid = Examples.from_histories(split.valid_history, split.valid_target, users, max_history, keep_seen=True)
    test = Examples.from_histories(split.test_history, split.test_target, users, max_history, keep_seen=True)
    return valid, test


def training_examples(train_sequences: list[np.ndarray], cfg: RunConfig) -> Examples:
    """Every prefix as one example (the paper), or windows whose every position is a target (causal histories).

    With ``train.recent_repeats`` each user's last example (its most recent target) is repeated that often."""
    if cfg.model.history in CAUSAL_HISTORIES:
        return Examples.windows(train_sequences, cfg.data.max_history)
    examples = Examples.training(train_sequences, cfg.data.max_history)
    if cfg.train.recent_repeats and len(examples):
        last = np.flatnonzero(np.append(examples.users[1:] != examples.users[:-1], True))  # examples are in user order
        examples = examples.subset(np.concatenate([np.arange(len(examples)), np.tile(last, cfg.train.recent_repeats)]))
    return examples


def prepare(
    dataset: Dataset, ids: SemanticIDs, cfg: RunConfig, ids_dir: str | Path | None = None
) -> tuple[TrainData, Examples, SequenceModel]:
    """Tokenizer, examples for train / valid / test, trie (TIGER only) and a fresh model. ``ids_dir``
    (where ``ids`` were read) holds the quantiser whose codewords model.embed_init=codebooks starts from."""
    if ids.item_ids != dataset.item_ids:
        raise TigerrecError(
            f"the Semantic IDs list other items than the dataset ({len(ids.item_ids)} vs {dataset.num_items} "
            "items); they were built for another dataset"
        )
    split = leave_one_out(dataset, cfg.data.backtest)
    tokenizer = make_tokenizer(ids, cfg)
    user_tokens = np.array([tokenizer.user_token(u) for u in dataset.user_ids], dtype=np.int64)
    valid, test = held_out_examples(split, cfg.data.max_history)
    data = TrainData(
        tokenizer=tokenizer,
        trie=PrefixTrie(ids.codes, ids.codebook_size) if cfg.model.kind == "tiger" else None,
        train=training_examples(split.train, cfg),
        valid=valid,
        user_tokens=user_tokens,
        anonymous_share=cfg.model.anonymous_share,
        forward=test if cfg.data.backtest else None,  # a backtest's "test" targets are validation items
    )
    return data, test, initial_model(tokenizer, cfg, ids_dir)


def initial_model(tokenizer: Tokenizer, cfg: RunConfig, ids_dir: str | Path | None = None) -> SequenceModel:
    """A model as training starts it: initialised from ``train.seed`` (same seed, same weights), its code
    embeddings from the quantiser's codewords in ``ids_dir`` with model.embed_init=codebooks."""
    torch.manual_seed(cfg.train.seed)
    model = make_model(tokenizer, cfg)
    if cfg.model.embed_init in CODEBOOK_INITS:
        if ids_dir is None:
            raise TigerrecError(
                f"config model.embed_init={cfg.model.embed_init} needs the Semantic IDs' quantiser: "
                "pass ids_dir to prepare"
            )
        init_code_embeddings(
            model,
            tokenizer,
            load_quantizer(Path(ids_dir) / QUANTIZER_FILE).codebooks,
            cfg.model.embed_init_std,
            head=cfg.model.embed_init == "codebooks+head",
        )
    return model


def member_dirs(run_dir: str | Path, members: int) -> list[Path]:
    """Where each model of a run trains and keeps its best weights and logs: the run directory itself,
    then, for an ensemble (train.members), members/1, members/2, ..."""
    run_dir = Path(run_dir)
    return [run_dir] + [run_dir / MEMBERS_DIR / str(member) for member in range(1, members)]


def load_best_model(model: SequenceModel, run_dir: str | Path, members: int = 1) -> SequenceModel | TigerEnsemble:
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
            member.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))
        except SafetensorError as e:
            raise TigerrecError(f"{path} is corrupt ({brief(e)})") from None
        except RuntimeError as e:  # names, shapes: a model of other settings than config.json's
            raise TigerrecError(f"{path} does not fit the model that {CONFIG_FILE} describes ({brief(e)})") from None
    return (model if trained == 1 else TigerEnsemble(models)).eval()


def evaluate_splits(
    model: SequenceModel, data: TrainData, test: Examples, cfg: RunConfig, counts: np.ndarray | None = None
) -> dict:
    """Metrics of every validation and test example, decoded as ``cfg.eval`` says (per popularity group
    of the targets too, given the training ``counts`` of every item: ``evaluate.item_counts``)."""
    evals = {
        name: evaluate_examples(model, data, examples, cfg, name, counts)
        for name, examples in (("valid", data.valid), ("test", test))
    }
    for name, metrics in evals.items():
        log.info("%s: %s", name, metrics)
    return evals


def evaluate_examples(
    model: SequenceModel,
    data: TrainData,
    examples: Examples,
    cfg: RunConfig,
    desc: str,
    counts: np.ndarray | None = None,
) -> dict:
    """Metrics of ``examples``, decoded as ``cfg.eval`` says."""
    configure_decoding(model, cfg.eval)
    bf16 = use_bf16(str(next(model.parameters()).device), cfg.train.bf16)
    return evaluate_data(model, data, examples, cfg.eval, bf16, desc, counts)


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
    recorded = _read_record(run_dir / BUDGET_FILE)
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


def training_counts(dataset: Dataset, cfg: RunConfig) -> np.ndarray:
    """How often each item occurs in the training sequences of ``cfg``'s split (``evaluate.item_counts``):
    what popularity groups and the popularity penalty are measured against."""
    return item_counts(leave_one_out(dataset, cfg.data.backtest).train, dataset.num_items)


def load_trained_run(
    run_dir: str | Path, source: str | Path | None = None
) -> tuple[RunConfig, Dataset, TrainData, Examples, SequenceModel]:
    """A trained run directory, ready to decode again: its config, dataset (from ``source``, by default
    the one config.json records), data with the validation examples, test examples and best model."""
    cfg = read_run_config(run_dir)
    dataset = load_dataset(
        source if source is not None else read_json(Path(run_dir) / CONFIG_FILE)["source"], cfg.data.min_interactions
    )
    ids_dir = Path(run_dir) / IDS_DIR
    data, test, model = prepare(dataset, load_ids(ids_dir, cfg), cfg, ids_dir)
    return cfg, dataset, data, test, load_best_model(model, run_dir, cfg.train.members)


def run(source: str | Dataset, cfg: RunConfig, run_dir: str | Path, overwrite: bool = False) -> dict:
    """Run every stage; returns (and writes) ``metrics.json``.

    ``source`` is anything ``load_dataset`` reads, or a ``Dataset`` already in
    memory (the cold-start experiment trains on one without its unseen items).
    A run directory is reused: stages built from the same inputs are skipped and
    training resumes from its checkpoint; a finished run asked again with the same
    settings returns its ``metrics.json`` without decoding anything. A stage built
    from other inputs stops the run before anything is written (``check_run_dir``),
    unless ``overwrite``: then it is deleted with everything after it and built again.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    rank, _ = distributed_context()
    timings = {}
    start = run_start = time.perf_counter()
    dataset = source if isinstance(source, Dataset) else load_dataset(source, cfg.data.min_interactions)
    source = dataset.name if isinstance(source, Dataset) else source
    timings["load_seconds"] = round(time.perf_counter() - start, 1)
    log.info("dataset %s: %s", dataset.name, dataset.stats())
    stale = check_run_dir(run_dir, dataset, cfg, overwrite)
    _barrier()  # every process has checked the directory before process 0 changes it
    if rank == 0:
        if stale:
            log.warning(
                "deleting from %s what was built from other inputs: %s", run_dir, ", ".join(p.name for p in stale)
            )
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        write_json(run_dir / CONFIG_FILE, {"source": str(source), **cfg.to_dict()})
        write_items(dataset, run_dir / ITEMS_FILE)

    start = time.perf_counter()
    ids_dir = run_dir / IDS_DIR
    if rank == 0:
        build_semantic_ids(dataset, cfg, ids_dir)
        # Before training: a checkpoint is never without the record of what it was trained from.
        write_json(run_dir / FINGERPRINT_FILE, model_inputs(dataset, cfg, ids_dir))
    _barrier()
    ids = load_ids(ids_dir, cfg)
    timings["ids_seconds"] = round(time.perf_counter() - start, 1)

    data, test, model = prepare(dataset, ids, cfg, ids_dir)
    log.info("model: %.2fM parameters, %d training examples", model.num_parameters() / 1e6, len(data.train))
    budget = {}
    if cfg.train.budget_minutes:
        cfg, budget["budget"] = fit_to_budget(cfg, run_dir, model, data, test, run_start)
    summaries = train_members(model, data, cfg, run_dir, ids_dir)
    summary = summaries[0] if len(summaries) == 1 else {**summaries[0], "members": summaries}
    timings["train_seconds"] = round(sum(s["train_seconds"] for s in summaries), 1)
    if rank != 0:
        return {}
    finished = read_json(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else None
    trained_now = sum(s["steps_this_run"] for s in summaries)
    if trained_now == 0 and finished and _run_settings(finished.get("config", {})) == _run_settings(cfg.to_dict()):
        log.info("%s was finished with these settings: its metrics are those of %s", run_dir, METRICS_FILE)
        return finished

    # Test metrics once, on the checkpoint selected by validation.
    evals = evaluate_splits(load_best_model(model, run_dir, cfg.train.members), data, test, cfg)
    timings["eval_seconds"] = round(evals["valid"]["seconds"] + evals["test"]["seconds"], 1)
    metrics = {
        "dataset": dataset.name,
        **evals,
        "training": summary,
        "timings": timings,
        **budget,
        "semantic_ids": {
            k: v for k, v in read_json(ids_dir / IDS_METRICS).items() if k not in ("history", "fingerprint")
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **provenance(),
        "config": cfg.to_dict(),
    }
    write_json(run_dir / METRICS_FILE, metrics)
    return metrics


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


def _run_settings(config: dict) -> dict:
    """The sections of a config that a run's metrics depend on (not ``experiment`` or ``sasrec``), as JSON
    reads them."""
    return json.loads(json.dumps({key: value for key, value in config.items() if key not in ("experiment", "sasrec")}))


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
