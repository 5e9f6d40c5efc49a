"""The whole pipeline, stage by stage, reusing the stages a run directory already holds.

dataset -> item sentences -> embeddings -> Semantic IDs -> sequence model -> test metrics

``run`` is the whole of ``tigerrec run``; ``prepare`` turns a dataset and its Semantic IDs into
the examples and the fresh model that training starts from. What the run directory holds, and
when a stage in it is reused, is ``rundir``'s; the minutes training gets and the ensemble's
members are ``members``'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import Dataset, Split, leave_one_out, load_dataset
from .device import provenance
from .errors import TigerrecError
from .evaluate import item_counts, save_target_ranks
from .fusion import load_fusion, train_item_model
from .io import RunLock, read_json, write_json
from .members import fit_to_budget, load_best_model, train_members
from .model import CAUSAL_HISTORIES, SequenceModel
from .new_items import save_item_vectors
from .quantize import make_quantizer
from .registry import initial_model, make_tokenizer
from .rundir import (
    CONFIG_FILE,
    FINGERPRINT_FILE,
    IDS_DIR,
    IDS_METRICS,
    ITEMS_FILE,
    METRICS_FILE,
    QUANTIZER_FILE,
    TARGET_RANKS_FILE,
    changed_settings,
    check_run_dir,
    ids_inputs,
    load_ids,
    model_inputs,
    read_ids_fingerprint,
    read_run_config,
    refusal,
    write_items,
)
from .semantic_ids import IDS_FILE, SemanticIDs, has_collision_code
from .sequences import Examples
from .text import TextEncoder, item_sentence, read_item_vectors, read_titles, with_titles
from .train import TrainData, distributed_context, evaluate_splits, training_device

log = logging.getLogger(__name__)


def embed_items(dataset: Dataset, cfg: RunConfig) -> tuple[np.ndarray, str, float]:
    """Sentence embeddings of every item (cached on disk by encoder + texts), or the precomputed vectors of
    ``text.embeddings_file``."""
    start = time.perf_counter()
    if cfg.text.embeddings_file:
        vectors, label = read_item_vectors(cfg.text.embeddings_file, dataset.item_ids)
        return vectors, label, time.perf_counter() - start
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
        differences = changed_settings(recorded, inputs)
        if not differences:
            log.info("reusing Semantic IDs in %s", out_dir)
            return load_ids(out_dir, cfg)
        if not overwrite:
            replaced = [path for path in (out_dir / IDS_FILE, out_dir / QUANTIZER_FILE, metrics_path) if path.exists()]
            raise TigerrecError(refusal(out_dir, differences, [], replaced))
        metrics_path.unlink()  # until the new IDs are complete the directory holds none

    embeddings, encoder_label, embed_seconds = embed_items(dataset, cfg)
    start = time.perf_counter()
    quantizer = make_quantizer(cfg.ids.scheme, embeddings.shape[1], cfg.ids)
    codes = quantizer.fit_encode(embeddings)
    fit_seconds = time.perf_counter() - start
    ids = SemanticIDs.from_codes(dataset.item_ids, codes, cfg.ids.codebook_size, has_collision_code(cfg.ids.scheme))
    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer.save(out_dir / QUANTIZER_FILE)
    save_item_vectors(out_dir, embeddings)  # what serving ranks new items by (``new_items``)
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


def held_out_examples(split: Split, max_history: int) -> tuple[Examples, Examples]:
    """Validation and test examples of every user (the leave-one-out targets), with their whole
    histories for ranking without them (eval.exclude_history), as serving and the baselines do."""
    users = np.arange(len(split.train))
    valid = Examples.from_histories(split.valid_history, split.valid_target, users, max_history, keep_seen=True)
    test = Examples.from_histories(split.test_history, split.test_target, users, max_history, keep_seen=True)
    return valid, test


def training_examples(train_sequences: list[np.ndarray], cfg: RunConfig) -> Examples:
    """Every prefix as one example (the paper), or windows whose every position is a target (causal histories)."""
    if cfg.model.history in CAUSAL_HISTORIES:
        return Examples.windows(train_sequences, cfg.data.max_history)
    return Examples.training(train_sequences, cfg.data.max_history)


def prepare(
    dataset: Dataset, ids: SemanticIDs, cfg: RunConfig, ids_dir: str | Path | None = None
) -> tuple[TrainData, Examples, SequenceModel]:
    """Tokenizer, examples for train / valid / test, the trie of the IDs (for a kind that ranks by
    generating IDs: ``catalogue_trie``) and a fresh model. ``ids_dir`` (where ``ids`` were read) holds
    the quantiser whose codewords model.embed_init=codebooks starts from."""
    if ids.item_ids != dataset.item_ids:
        raise TigerrecError(
            f"the Semantic IDs list other items than the dataset ({len(ids.item_ids)} vs {dataset.num_items} "
            "items); they were built for another dataset"
        )
    split = leave_one_out(dataset, cfg.data.backtest)
    tokenizer = make_tokenizer(ids, cfg)
    user_tokens = np.array([tokenizer.user_token(u) for u in dataset.user_ids], dtype=np.int64)
    valid, test = held_out_examples(split, cfg.data.max_history)
    model = initial_model(tokenizer, cfg, ids_dir)
    data = TrainData(
        tokenizer=tokenizer,
        trie=model.catalogue_trie(ids.codes, ids.codebook_size),
        train=training_examples(split.train, cfg),
        valid=valid,
        user_tokens=user_tokens,
        anonymous_share=cfg.model.anonymous_share,
        forward=test if cfg.data.backtest else None,  # a backtest's "test" targets are validation items
    )
    return data, test, model


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

    One writer per run directory: a second ``run`` or ``add-items`` on it fails at once
    (``io.RunLock``, held by process 0 under DDP).
    """
    cfg.validate()
    rank, _ = distributed_context()
    run_start = time.perf_counter()
    dataset = source if isinstance(source, Dataset) else load_dataset(source, cfg.data.min_interactions)
    source = dataset.name if isinstance(source, Dataset) else source
    timings = {"load_seconds": round(time.perf_counter() - run_start, 1)}
    log.info("dataset %s: %s", dataset.name, dataset.stats())
    # Bad input is refused before the directory is touched; from here on it is this process's alone.
    with RunLock(run_dir, "run") if rank == 0 else contextlib.nullcontext():
        return _run(dataset, str(source), cfg, Path(run_dir), overwrite, rank, run_start, timings)


def _run(
    dataset: Dataset,
    source: str,
    cfg: RunConfig,
    run_dir: Path,
    overwrite: bool,
    rank: int,
    run_start: float,
    timings: dict,
) -> dict:
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
    if cfg.fusion.item_model != "none":
        start = time.perf_counter()
        summary["item_model"], item_model_trained = train_item_model(dataset, cfg, run_dir, training_device())
        trained_now += item_model_trained
        timings["item_model_seconds"] = round(time.perf_counter() - start, 1)
    if trained_now == 0 and finished and _run_settings(finished.get("config", {})) == _run_settings(cfg.to_dict()):
        log.info("%s was finished with these settings: its metrics are those of %s", run_dir, METRICS_FILE)
        return finished

    # Test metrics once, on the checkpoint selected by validation (re-ranked by the item model, if any).
    best = load_best_model(model, run_dir, cfg.train.members)
    fusion = load_fusion(run_dir, cfg, training_device())
    evals, ranks = evaluate_splits(best, data, test, cfg, dataset_name=dataset.name, fusion=fusion)
    save_target_ranks(run_dir / TARGET_RANKS_FILE, ranks)  # for paired comparisons with other models
    test_seconds = sum(p["seconds"] for p in evals["test_protocols"].values())
    timings["eval_seconds"] = round(evals["valid"]["seconds"] + test_seconds, 1)
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


def _run_settings(config: dict) -> dict:
    """The sections of a config that a run's metrics depend on, as JSON reads them: not ``experiment``, and
    ``sasrec`` only when the run fuses that item model."""
    fused = config.get("fusion", {}).get("item_model", "none") != "none"
    skipped = ("experiment",) if fused else ("experiment", "sasrec")
    return json.loads(json.dumps({key: value for key, value in config.items() if key not in skipped}))


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
