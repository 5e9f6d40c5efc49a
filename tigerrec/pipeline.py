"""The whole pipeline, stage by stage, reusing the stages a run directory already holds.

dataset -> item sentences -> embeddings -> Semantic IDs -> sequence model -> test metrics

Run directory layout:
    config.json            the resolved configuration
    items.jsonl            item ids, titles, categories (so a run serves without the dataset)
    ids/                   semantic_ids.csv, quantizer.safetensors, ids_metrics.json
    model.safetensors      best model by validation NDCG@10
    checkpoint.pt          last training state (resume)
    train_log.csv, valid_log.csv
    metrics.json           test + validation metrics, timings, config
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .config import RunConfig
from .data import Dataset, Split, leave_one_out, load_dataset
from .decoding import PrefixTrie
from .device import machine_name, use_bf16
from .evaluate import evaluate
from .io import read_json, write_json, write_text
from .model import TigerModel
from .quantize import make_quantizer
from .semantic_ids import SemanticIDs
from .sequences import Examples, Tokenizer
from .text import TextEncoder, item_sentence, read_titles, with_titles
from .train import BEST_MODEL, TrainData, distributed_context, train

log = logging.getLogger(__name__)

IDS_DIR = "ids"
IDS_METRICS = "ids_metrics.json"
QUANTIZER_FILE = "quantizer.safetensors"
ITEMS_FILE = "items.jsonl"


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


def build_semantic_ids(dataset: Dataset, cfg: RunConfig, out_dir: str | Path) -> SemanticIDs:
    """Embeddings -> quantiser -> unique Semantic IDs, written to ``out_dir``.

    Reused when ``out_dir`` already holds IDs made with the same text and ID settings.
    """
    out_dir = Path(out_dir)
    settings = {"text": vars(cfg.text), "ids": cfg.ids.__dict__, "items": dataset.num_items}
    metrics_path = out_dir / IDS_METRICS
    if metrics_path.exists() and read_json(metrics_path).get("settings") == json.loads(json.dumps(settings)):
        log.info("reusing Semantic IDs in %s", out_dir)
        return SemanticIDs.load(out_dir, cfg.ids.codebook_size)

    embeddings, encoder_label, embed_seconds = embed_items(dataset, cfg)
    start = time.perf_counter()
    quantizer = make_quantizer(cfg.ids.scheme, embeddings.shape[1], cfg.ids).fit(embeddings)
    fit_seconds = time.perf_counter() - start
    ids = SemanticIDs.from_codes(dataset.item_ids, quantizer.encode(embeddings), cfg.ids.codebook_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    quantizer.save(out_dir / QUANTIZER_FILE)
    ids.save(out_dir)
    metrics = {
        **ids.metrics(),
        "scheme": cfg.ids.scheme, "encoder": encoder_label, "embedding_dim": int(embeddings.shape[1]),
        "reconstruction": quantizer.history[-1].get("reconstruction") if quantizer.history else None,
        "embed_seconds": round(embed_seconds, 1), "quantizer_seconds": round(fit_seconds, 1),
        "history": quantizer.history, "settings": settings,
    }
    write_json(metrics_path, metrics)
    log.info("Semantic IDs: utilisation %s, unique prefixes %.1f%%, largest collision group %d",
             metrics["utilization"], 100 * metrics["unique_prefix_share"], metrics["max_collision_group"])
    return ids


def write_items(dataset: Dataset, path: Path) -> None:
    lines = [json.dumps({"item_id": item, **meta}) for item, meta in zip(dataset.item_ids, dataset.item_meta)]
    write_text(path, "\n".join(lines) + "\n")


def read_items(path: str | Path) -> dict[str, dict]:
    """``items.jsonl`` back as {item id: metadata}, in catalogue order."""
    items = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                items[str(record.pop("item_id"))] = record
    return items


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was made with (``config.json`` minus the source)."""
    values = read_json(Path(run_dir) / "config.json")
    values.pop("source", None)
    return RunConfig.from_dict(values)


def make_tokenizer(ids: SemanticIDs, cfg: RunConfig) -> Tokenizer:
    return Tokenizer(ids.codes, ids.codebook_size, cfg.model.user_buckets, cfg.data.max_history, cfg.model.use_user_token,
                     history=cfg.model.history)


def make_model(tokenizer: Tokenizer, cfg: RunConfig) -> TigerModel:
    """A freshly initialised sequence model sized for ``tokenizer``'s vocabulary and IDs."""
    return TigerModel(cfg.model, tokenizer.vocab_size, tokenizer.id_length, tokenizer.codebook_size)


def held_out_examples(split: Split, max_history: int) -> tuple[Examples, Examples]:
    """Validation and test examples of every user (the leave-one-out targets)."""
    users = np.arange(len(split.train))
    valid = Examples.from_histories(split.valid_history, split.valid_target, users, max_history)
    test = Examples.from_histories(split.test_history, split.test_target, users, max_history)
    return valid, test


def training_examples(train_sequences: list[np.ndarray], cfg: RunConfig) -> Examples:
    """Every prefix as one example (the paper), or windows whose every position is a target (causal histories)."""
    if cfg.model.history != "codes":
        return Examples.windows(train_sequences, cfg.data.max_history)
    return Examples.training(train_sequences, cfg.data.max_history)


def prepare(dataset: Dataset, ids: SemanticIDs, cfg: RunConfig) -> tuple[TrainData, Examples, TigerModel]:
    """Tokenizer, examples for train / valid / test, trie and a fresh model."""
    if ids.item_ids != dataset.item_ids:
        raise ValueError("Semantic IDs were built for a different item list; delete the ids/ directory")
    split = leave_one_out(dataset)
    tokenizer = make_tokenizer(ids, cfg)
    user_tokens = np.array([tokenizer.user_token(u) for u in dataset.user_ids], dtype=np.int64)
    valid, test = held_out_examples(split, cfg.data.max_history)
    data = TrainData(
        tokenizer=tokenizer,
        trie=PrefixTrie(ids.codes, ids.codebook_size),
        train=training_examples(split.train, cfg),
        valid=valid,
        user_tokens=user_tokens,
    )
    torch.manual_seed(cfg.train.seed)  # same seed, same initial weights
    model = make_model(tokenizer, cfg)
    return data, test, model


def load_best_model(model: TigerModel, run_dir: str | Path) -> TigerModel:
    """Load the checkpoint selected by validation into ``model``, on the device the model is on."""
    model.load_state_dict(load_file(str(Path(run_dir) / BEST_MODEL), device=str(next(model.parameters()).device)))
    return model.eval()


def run(source: str | Dataset, cfg: RunConfig, run_dir: str | Path) -> dict:
    """Run every stage; returns (and writes) ``metrics.json``.

    ``source`` is anything ``load_dataset`` reads, or a ``Dataset`` already in
    memory (the cold-start experiment trains on one without its unseen items).
    """
    run_dir = Path(run_dir)
    rank, _ = distributed_context()
    run_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    dataset = source if isinstance(source, Dataset) else load_dataset(source, cfg.data.min_interactions)
    source = dataset.name if isinstance(source, Dataset) else source
    timings["load_seconds"] = round(time.perf_counter() - start, 1)
    log.info("dataset %s: %s", dataset.name, dataset.stats())
    if rank == 0:
        write_json(run_dir / "config.json", {"source": str(source), **cfg.to_dict()})
        write_items(dataset, run_dir / ITEMS_FILE)

    start = time.perf_counter()
    ids_dir = run_dir / IDS_DIR
    if rank == 0:
        build_semantic_ids(dataset, cfg, ids_dir)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    ids = SemanticIDs.load(ids_dir, cfg.ids.codebook_size)
    timings["ids_seconds"] = round(time.perf_counter() - start, 1)

    data, test, model = prepare(dataset, ids, cfg)
    log.info("model: %.2fM parameters, %d training examples", model.num_parameters() / 1e6, len(data.train))
    summary = train(model, data, cfg.train, cfg.eval, run_dir)
    timings["train_seconds"] = summary["train_seconds"]
    if rank != 0:
        return {}

    # Test metrics once, on the checkpoint selected by validation.
    load_best_model(model, run_dir)
    bf16 = use_bf16(str(next(model.parameters()).device), cfg.train.bf16)
    evals = {}
    for name, examples in (("valid", data.valid), ("test", test)):
        evals[name] = evaluate(model, data.tokenizer, data.trie, examples, data.user_tokens[examples.users],
                               cfg.eval.beam_size, cfg.eval.top_k, cfg.eval.batch_size, bf16, desc=name)
        log.info("%s: %s", name, evals[name])
    timings["eval_seconds"] = round(evals["valid"]["seconds"] + evals["test"]["seconds"], 1)
    metrics = {
        "dataset": dataset.name, **evals, "training": summary, "timings": timings,
        "semantic_ids": {k: v for k, v in read_json(ids_dir / IDS_METRICS).items() if k not in ("history", "settings")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": machine_name(),
        "config": cfg.to_dict(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics
