"""The paper's further experiments, one command each, on the main pipeline's data, splits and metrics.

    tigerrec experiment coldstart beauty --out runs/experiments
    tigerrec experiment diversity beauty --out runs/experiments --run-dir runs/beauty
    tigerrec experiment ablation  beauty --out runs/experiments --max-minutes 60
    tigerrec experiment baselines beauty --out runs/experiments --run-dir runs/beauty

Each writes ``OUT/<name>.json`` (numbers, settings, timings) and ``OUT/<name>.md``
(a Markdown table); the runs they train go to ``OUT/<name>/`` and are reused or
resumed when the command is run again.

- coldstart: 5% of the test items are "unseen": removed from every sequence, so
  neither the quantiser nor the sequence model sees them; afterwards they get
  Semantic IDs from the trained quantiser. At most ceil(epsilon * K) unseen items
  enter a top K, chosen three ways: the paper's rule, the unseen items that share the
  first codes of each generated ID (``epsilon_rank``, TIGER only); the model's own
  scores of the unseen IDs (``SCORED_RULE``, both model kinds); and content similarity
  to a profile the model's predictions move (``GUIDED_RULE``, tuned on validation
  users). Compared with Semantic_KNN, plain and under the same reserved slots.
- diversity: temperature sampling of the decoder; Entropy@K of the categories of
  the top-K items (natural log, ``category_entropy``) against the Recall@10 it costs.
- ablation: the same sequence model and budget on random / LSH / RQ-KMeans /
  RQ-VAE IDs, and RQ-VAE IDs without the user token.
- baselines: most-popular, Semantic_KNN and SASRec (``baselines.py``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .baselines import (
    markov,
    most_popular,
    rank_by_profile,
    sasrec_recommend,
    semantic_knn,
    split_metrics,
    train_sasrec,
)
from .config import MODEL_KINDS, RunConfig, show_value
from .data import Dataset, leave_one_out, load_dataset
from .decoding import ItemFilter, merge_capped, new_item_cap
from .device import provenance, use_bf16
from .errors import TigerrecError
from .evaluate import (
    METRICS,
    PROTOCOLS,
    load_target_ranks,
    paired_bootstrap_ci,
    protocol_name,
    ranking_metrics,
    recommend_examples,
    save_target_ranks,
)
from .fusion import load_item_model, reusable_item_model
from .io import read_json, write_json, write_text
from .ledger import record_test
from .members import load_best_model
from .model import save_model
from .new_items import guided_profiles, guided_rank, history_profiles, predicted_profiles, rank_candidates
from .pipeline import embed_items, prepare, run
from .presets import paper_table1
from .quantize import load_quantizer
from .registry import make_model, make_tokenizer
from .rundir import IDS_DIR, ITEM_MODEL, QUANTIZER_FILE, TARGET_RANKS_FILE, load_ids, read_run_config
from .semantic_ids import IDS_FILE, SemanticIDs
from .sequences import Examples
from .train import training_device

log = logging.getLogger(__name__)

# Further figures of the paper (TIGER_SPEC.md), shown next to ours.
PAPER_ABLATION = {
    "random": {"recall@5": 0.0296},
    "lsh": {"recall@5": 0.0379},
    "rqvae": {"recall@5": 0.0454, "ndcg@10": 0.0384},
    "rqvae-no-user-token": {"ndcg@10": 0.0367},
}
PAPER_ENTROPY = {1.0: 0.76, 1.5: 1.14, 2.0: 1.38}  # Beauty, Entropy@10


def markdown_table(header: list[str], rows: list[list]) -> str:

    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def _device_and_bf16(cfg: RunConfig) -> tuple[str, bool]:
    device = training_device()
    return device, use_bf16(device, cfg.train.bf16)


# ------------------------------------------------------------------ cold start


def pick_unseen(test_targets: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded ``share`` of the distinct test-target items (at least one), sorted."""
    distinct = np.unique(test_targets)
    count = max(1, round(share * len(distinct)))
    return np.sort(np.random.default_rng(seed).choice(distinct, count, replace=False))


def without_items(dataset: Dataset, items: np.ndarray) -> Dataset:
    """``dataset`` with ``items`` removed from the catalogue and from every sequence.

    Users left with fewer than 3 items (no room for train, valid and test) are dropped.
    The other items keep their order, so they are the first rows of the cold-start IDs.
    """
    drop = np.zeros(dataset.num_items, dtype=bool)
    drop[items] = True
    new_index = np.cumsum(~drop) - 1
    users, sequences = [], []
    for user, seq in zip(dataset.user_ids, dataset.sequences):
        kept = new_index[seq[~drop[seq]]]
        if len(kept) >= 3:
            users.append(user)
            sequences.append(kept)
    keep = np.flatnonzero(~drop)
    return Dataset(
        f"{dataset.name}-seen",
        users,
        [dataset.item_ids[i] for i in keep],
        sequences,
        [dataset.item_meta[i] for i in keep],
    )


def cold_start_ids(dataset: Dataset, unseen: np.ndarray, cfg: RunConfig, run_dir: Path):
    """Semantic IDs of every item: the seen ones as the run made them, the unseen ones from the
    run's trained quantiser, with collision codes continuing after the seen items' (``add_items``).

    Returns the IDs (rows: seen items, then unseen), the ID row of every dataset item, and the
    item embeddings in ID-row order.
    """
    seen_ids = load_ids(run_dir / IDS_DIR, cfg)
    quantizer = load_quantizer(run_dir / IDS_DIR / QUANTIZER_FILE)
    embeddings, _, _ = embed_items(dataset, cfg)
    ids = seen_ids.add_items([dataset.item_ids[i] for i in unseen], quantizer.encode(embeddings[unseen]))
    row = {item: i for i, item in enumerate(ids.item_ids)}
    to_row = np.array([row[item] for item in dataset.item_ids])
    by_row = np.empty_like(embeddings)
    by_row[to_row] = embeddings
    return ids, to_row, by_row


def unseen_siblings(codes: np.ndarray, ids: SemanticIDs, num_seen: int) -> np.ndarray:
    """(N, B, M) unseen items (ID rows >= num_seen) sharing the quantiser codes (all but the collision
    suffix) of each generated ID ``codes`` (N, B, L), in collision-code order; -1 pads."""
    levels = ids.quantized.shape[1]
    groups = defaultdict(list)
    for item in range(num_seen, len(ids.codes)):
        groups[tuple(ids.codes[item, :levels])].append(item)
    out = np.full((*codes.shape[:2], max(map(len, groups.values()), default=1)), -1, dtype=np.int64)
    for n in range(codes.shape[0]):
        for b in range(codes.shape[1]):
            members = groups.get(tuple(codes[n, b, :levels]), ())
            out[n, b, : len(members)] = members
    return out


EPSILON_RULE = (
    "The top K is filled by walking the generated IDs (beam search constrained to the ID prefixes of all items, "
    "seen and unseen) best first; each ID contributes the unseen items sharing its quantiser codes (in "
    "collision-code order), then the seen item with exactly that ID, if there is one. At most "
    "ceil(epsilon * K) unseen items enter the top K; later ones are skipped. "
    "An item already taken is skipped; a list with too few candidates is padded (counts as a miss)."
)


def epsilon_rank(seen: np.ndarray, unseen: np.ndarray, k: int, epsilon: float) -> np.ndarray:
    """Top-k lists from generated IDs holding at most ceil(epsilon * k) unseen items (``EPSILON_RULE``).

    seen: (N, B) the seen item of each generated ID, best first (-1 = none);
    unseen: (N, B, M) the unseen items sharing that ID's first codes (-1 = padding).

    Unseen siblings come before the seen item because the collision suffix only tells apart
    items that share the others (in assignment order): the exact match has no better
    claim than its unseen siblings, so the cap alone decides how many unseen items
    appear. The ceiling lets any epsilon > 0 admit one unseen item even at K = 1.
    """
    cap = new_item_cap(epsilon, k)
    ranked = np.full((len(seen), k), -1, dtype=np.int64)
    for row in range(len(seen)):
        taken, unseen_taken = [], 0
        for b in range(seen.shape[1]):
            for item in unseen[row, b]:
                if item >= 0 and unseen_taken < cap and item not in taken and len(taken) < k:
                    taken.append(item)
                    unseen_taken += 1
            if seen[row, b] >= 0 and seen[row, b] not in taken and len(taken) < k:
                taken.append(seen[row, b])
        ranked[row, : len(taken)] = taken
    return ranked


SCORED_RULE = (
    "Scored: the model ranks the seen items and, separately, the unseen ones (beam search restricted to the "
    "unseen items' IDs, or RPG's exact scores), and the two lists merge by score with at most ceil(epsilon * K) "
    "unseen items (``decoding.merge_capped``). Reserved: the same two lists, but the ceil(epsilon * K) best-scored "
    "unseen items always enter the top K and the best seen items fill the rest."
)


GUIDED_RULE = (
    "Guided reserved: as reserved, but the unseen items are those nearest (cosine) to the user's Semantic_KNN profile "
    "moved towards what the model predicts: (1 - pull) x the profile of the history + pull x the profile of the "
    "model's eval.new_item_guides best seen items (each weighted by its probability among them), history excluded. "
    "pull is the value of experiment.guide_pulls with the best NDCG@10 of that ranking on the validation users whose "
    "validation target is unseen (pull 0 is Semantic_KNN's ranking of the unseen items)."
)


def choose_pull(
    embeddings, histories, predicted, log_probs, targets, pulls, candidates, max_history
) -> tuple[float, dict[str, float]]:
    """The pull of ``pulls`` whose guided ranking (``new_items.guided_rank``) of the ``candidates`` has the
    best NDCG@10 on (validation) ``targets``, and the NDCG@10 of each; ties go to the smaller pull."""
    excluded = ItemFilter(histories)
    history, ahead = (
        history_profiles(embeddings, histories, max_history),
        predicted_profiles(embeddings, predicted, log_probs),
    )  # the same for every pull

    def ndcg(pull):
        profiles = guided_profiles(history, ahead, pull)
        ranked, _ = rank_candidates(embeddings, profiles, candidates, excluded, 10)
        return ranking_metrics(ranked, targets, (10,))["ndcg@10"]

    by_pull = {f"{p:g}": ndcg(p) for p in sorted(pulls)}
    best = max(by_pull, key=lambda p: (by_pull[p], -float(p)))
    return float(best), by_pull


class ColdUsers(NamedTuple):
    """Users whose target is an unseen item: their histories (ID rows), examples and user tokens."""

    histories: list[np.ndarray]
    examples: Examples
    user_tokens: np.ndarray


class ColdStart:
    """What the cold-start rules rank with: every item's Semantic ID (the unseen ones from the quantiser of
    the run trained without them), the items' embeddings in ID-row order, and that run's model."""

    def __init__(self, dataset: Dataset, unseen: np.ndarray, cfg: RunConfig, run_dir: Path):
        self.dataset, self.unseen, self.cfg = dataset, unseen, cfg
        self.ids, self.to_row, self.embeddings = cold_start_ids(dataset, unseen, cfg, run_dir)
        self.num_seen = dataset.num_items - len(unseen)
        self.seen = np.arange(len(self.ids.item_ids)) < self.num_seen  # by ID row
        self.tokenizer = make_tokenizer(self.ids, cfg)
        device, self.bf16 = _device_and_bf16(cfg)
        self.model = load_best_model(make_model(self.tokenizer, cfg).to(device), run_dir, cfg.train.members)
        self.trie = self.model.catalogue_trie(self.ids.codes, self.ids.codebook_size)

    def users(self, targets: np.ndarray, histories_of: list[np.ndarray]) -> ColdUsers:
        """The users whose ``targets`` are unseen; their histories keep any unseen items (now with IDs)."""
        users = np.flatnonzero(np.isin(targets, self.unseen))
        histories = [self.to_row[histories_of[u]] for u in users]
        examples = Examples.from_histories(histories, self.to_row[targets[users]], users, self.cfg.data.max_history)
        tokens = [self.tokenizer.user_token(self.dataset.user_ids[u]) for u in users]
        return ColdUsers(histories, examples, np.array(tokens, dtype=np.int64))

    def decode(self, users: ColdUsers, allowed: np.ndarray | None = None):
        """The model's best ``eval.beam_size`` items (of those ``allowed``) for ``users``: items, codes, scores."""
        beam = self.cfg.eval.beam_size
        return recommend_examples(
            self.model,
            self.tokenizer,
            self.trie,
            users.examples,
            users.user_tokens,
            beam,
            beam,
            self.cfg.eval.batch_size,
            True,
            self.bf16,
            "cold start",
            allowed=allowed,
        )


class RecallRows:
    """Recall@1..10 of each ranking rule on the cold users, and how many unseen items its top 10 holds."""

    KS = range(1, 11)

    def __init__(self, targets: np.ndarray, num_seen: int, epsilons: list[float]):
        self.targets, self.num_seen, self.epsilons = targets, num_seen, epsilons
        self.recall: dict[str, dict[int, float]] = {}
        self.unseen_in_top10: dict[str, float] = {}

    def add(self, name: str, top_k) -> None:
        """The row of ``top_k(k)``, a ranking at each K: the cap depends on K, so each K gets its own list
        (not a prefix of the top 10)."""
        self.recall[name] = {k: ranking_metrics(top_k(k), self.targets, (k,))[f"recall@{k}"] for k in self.KS}
        self.unseen_in_top10[name] = float((top_k(10) >= self.num_seen).sum(1).mean())

    def add_merged(self, name: str, seen_lists, unseen_lists, reserve: bool) -> None:
        """Rows for two ranked lists (items, scores) merged under each epsilon's cap (``merge_capped``)."""
        # With epsilon 0 reserving gives the same list as capping: no row of its own.
        for epsilon in (e for e in self.epsilons if e > 0 or not reserve):
            self.add(
                f"{name} eps={epsilon:g}",
                lambda k, e=epsilon: merge_capped(*seen_lists, *unseen_lists, new_item_cap(e, k), k, reserve)[0],
            )


def coldstart(source, cfg: RunConfig, out_dir: Path, overwrite: bool = False) -> tuple[dict, str]:
    exp = cfg.experiment
    if cfg.data.backtest:  # it holds out test items of its own; the two would cut sequences differently
        raise TigerrecError(
            f"the cold-start experiment does not take data.backtest (got {cfg.data.backtest}); set it to 0"
        )
    dataset = load_dataset(source, cfg.data.min_interactions)
    split = leave_one_out(dataset)
    unseen = pick_unseen(split.test_target, exp.unseen_share, exp.seed)
    run_dir = out_dir / "coldstart"
    # Quantiser and sequence model never see the unseen items. The seen dataset gets its own
    # leave-one-out split: a user whose test target was unseen loses that item, so their
    # training part ends one item earlier (nothing of the cold-start test leaks into training).
    seen_metrics = run(without_items(dataset, unseen), cfg, run_dir, overwrite)
    setting = ColdStart(dataset, unseen, cfg, run_dir)
    cold = setting.users(split.test_target, split.test_history)
    if not len(cold.histories):
        raise ValueError("no test user has an unseen target; raise experiment.unseen_share")
    rows = RecallRows(cold.examples.targets, setting.num_seen, exp.epsilons)
    _knn_rows(rows, setting, cold)
    prefix_rule = _prefix_rows(rows, setting, cold) if setting.model.generates_ids else {}
    seen_lists = _scored_rows(rows, setting, cold)
    guided = _guided_rows(rows, setting, split, cold, seen_lists)
    result = {
        "model": setting.model.kind,
        "unseen_items": len(unseen),
        "seen_items": setting.num_seen,
        "cold_test_users": len(cold.histories),
        **prefix_rule,
        "recall": rows.recall,
        "mean_unseen_in_top10": rows.unseen_in_top10,
        "guided": guided,
        "seen_test_metrics": seen_metrics["test"],
        "training": seen_metrics["training"],
        "fill_rule": (EPSILON_RULE + " " if setting.model.generates_ids else "") + SCORED_RULE + " " + GUIDED_RULE,
    }
    record_test(dataset.name, cfg.to_dict(), f"{setting.model.kind} cold start", {"recall": rows.recall})
    return result, _coldstart_table(result, rows, exp.unseen_share)


def _knn_rows(rows: RecallRows, setting: ColdStart, cold: ColdUsers) -> None:
    """Semantic_KNN over all items, and under the reserved rule (the content-only reference for it: the
    ceil(epsilon * K) unseen items nearest to the profile, then the nearest seen ones, ranks standing in
    for scores)."""
    embeddings, histories = setting.embeddings, cold.histories
    profiles = history_profiles(embeddings, histories, setting.cfg.data.max_history)
    knn = ranking_metrics(rank_by_profile(embeddings, profiles, histories, 10), rows.targets, rows.KS)
    rows.recall["Semantic_KNN"] = {k: knn[f"recall@{k}"] for k in rows.KS}
    seen = setting.seen
    knn_seen, knn_unseen = (rank_by_profile(embeddings, profiles, histories, 10, among=part) for part in (seen, ~seen))
    by_rank = np.broadcast_to(-np.arange(10.0), knn_seen.shape)
    rows.add_merged("Semantic_KNN reserved", (knn_seen, by_rank), (knn_unseen, by_rank), True)


def _prefix_rows(rows: RecallRows, setting: ColdStart, cold: ColdUsers) -> dict:
    """The paper's rule (``EPSILON_RULE``). The model may generate any prefix of a real item, unseen ones
    included (it knows every code token); a generated unseen ID then brings its unseen siblings, itself
    among them."""
    generated, codes, _ = setting.decode(cold)
    siblings = unseen_siblings(codes, setting.ids, setting.num_seen)
    generated = np.where(generated < setting.num_seen, generated, -1)  # the seen item with exactly that ID, if any
    for epsilon in setting.cfg.experiment.epsilons:
        rows.add(f"TIGER prefix eps={epsilon:g}", lambda k, e=epsilon: epsilon_rank(generated, siblings, k, e))
    return {"generated_ids_with_unseen_siblings": float((siblings >= 0).any(2).mean())}


def _scored_rows(rows: RecallRows, setting: ColdStart, cold: ColdUsers) -> tuple[np.ndarray, np.ndarray]:
    """The model's own scores of the seen and of the unseen items, merged (``SCORED_RULE``); returns the
    seen items' list (items, scores)."""
    seen_best, _, seen_scores = setting.decode(cold, setting.seen)
    unseen_best, _, unseen_scores = setting.decode(cold, ~setting.seen)
    for reserve, rule in ((False, "scored"), (True, "reserved")):
        name = f"{setting.model.kind.upper()} {rule}"
        rows.add_merged(name, (seen_best, seen_scores), (unseen_best, unseen_scores), reserve)
    return seen_best, seen_scores


def _guided_rows(rows, setting: ColdStart, split, cold: ColdUsers, seen_lists) -> dict:
    """``GUIDED_RULE``: content ranks the unseen items, from a profile the model's predictions move; how far
    is chosen on the validation users whose target is unseen (never on the test users)."""
    exp, embeddings, seen = setting.cfg.experiment, setting.embeddings, setting.seen
    valid_users = setting.users(split.valid_target, split.valid_history)
    if not len(valid_users.histories):
        raise ValueError(
            "no validation user has an unseen target to tune the guided rule on; raise experiment.unseen_share"
        )
    top = setting.cfg.eval.new_item_guides
    valid_best, _, valid_scores = setting.decode(valid_users, seen)
    pull, by_pull = choose_pull(
        embeddings,
        valid_users.histories,
        valid_best[:, :top],
        valid_scores[:, :top],
        valid_users.examples.targets,
        exp.guide_pulls,
        np.flatnonzero(~seen),
        setting.cfg.data.max_history,
    )
    seen_best, seen_scores = seen_lists
    guided = guided_rank(
        embeddings,
        cold.histories,
        seen_best[:, :top],
        seen_scores[:, :top],
        np.flatnonzero(~seen),
        ItemFilter(cold.histories),
        pull,
        10,
        setting.cfg.data.max_history,
    )
    rows.add_merged(f"{setting.model.kind.upper()} guided reserved", seen_lists, guided, True)
    return {
        "pull": pull,
        "guide_items": top,
        "validation_cold_users": len(valid_users.histories),
        "validation_unseen_ndcg@10_by_pull": by_pull,
    }


def _coldstart_table(result: dict, rows: RecallRows, unseen_share: float) -> str:
    header = ["K", *rows.recall]
    table = [[k, *(rows.recall[name][k] for name in rows.recall)] for k in rows.KS]
    table.append(["unseen in top 10", None, *rows.unseen_in_top10.values()])
    intro = (
        f"Recall@K on the {result['cold_test_users']} test users whose target is one of {result['unseen_items']} "
        f"unseen items ({unseen_share:.0%} of the distinct test targets). "
        "Paper: TIGER beats Semantic_KNN at every K for eps >= 0.1.\n\n"
        f"{result['fill_rule']} Semantic_KNN ranks all items, seen and unseen, by cosine similarity to the mean "
        "embedding of the user's last items, history excluded; Semantic_KNN reserved applies the reserved rule to its "
        "nearest unseen and nearest seen items.\n\n"
    )
    return intro + markdown_table(header, table)


# ------------------------------------------------------------------ diversity


def item_categories(item_meta: list[dict], level: int) -> np.ndarray:
    """Category index of every item: the ``level``-th name (1 = root) of its first category path,
    or the deepest name when the path is shorter or ``level`` is 0. Items without categories share one."""
    names = []
    for meta in item_meta:
        paths = meta.get("categories") or [[]]
        path = [paths] if isinstance(paths, str) else paths[0] if isinstance(paths[0], list) else paths
        names.append(str(path[level - 1]) if level and len(path) >= level else str(path[-1]) if path else "")
    return np.unique(names, return_inverse=True)[1].ravel()


def category_entropy(categories: np.ndarray) -> np.ndarray:
    """Entropy in nats (natural log) of the category distribution of each row of (N, K) category
    indices; -1 entries (no item) are left out. All one category -> 0; two equally often -> ln 2."""
    categories = np.asarray(categories)
    valid = categories >= 0
    counts = np.zeros((len(categories), max(int(categories.max(initial=0)) + 1, 1)))
    np.add.at(counts, (np.nonzero(valid)[0], categories[valid]), 1)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(1)


def diversity(
    source, cfg: RunConfig, out_dir: Path, run_dir: str | Path | None = None, overwrite: bool = False
) -> tuple[dict, str]:
    exp = cfg.experiment
    if run_dir is None:
        run_dir = out_dir / "diversity"
        run(source, cfg, run_dir, overwrite)
    else:
        cfg = replace(read_run_config(run_dir), experiment=exp, eval=cfg.eval)  # the trained model's own sizes
    run_dir = Path(run_dir)
    dataset = load_dataset(source, cfg.data.min_interactions)
    data, test, model = prepare(dataset, load_ids(run_dir / IDS_DIR, cfg), cfg, run_dir / IDS_DIR)
    device, bf16 = _device_and_bf16(cfg)
    model = load_best_model(model.to(device), run_dir, cfg.train.members)
    levels = {f"level {exp.category_level}" if exp.category_level else "leaf": exp.category_level, "leaf": 0}
    categories = {name: item_categories(dataset.item_meta, level) for name, level in levels.items()}
    rows = []
    for temperature in [None, *exp.temperatures]:
        generator = torch.Generator(device=device).manual_seed(exp.seed)
        ranked, _, _ = recommend_examples(
            model,
            data.tokenizer,
            data.trie,
            test,
            data.user_tokens[test.users],
            cfg.eval.beam_size,
            cfg.eval.top_k,
            cfg.eval.batch_size,
            True,
            bf16,
            "diversity",
            temperature,
            generator,
        )
        row = {
            "decoding": "beam search" if temperature is None else f"sampling T={temperature:g}",
            "temperature": temperature,
            **ranking_metrics(ranked, test.targets),
        }
        for name, cats in categories.items():
            for k in (5, 10):
                row[f"entropy@{k} ({name})"] = float(
                    category_entropy(np.where(ranked[:, :k] >= 0, cats[ranked[:, :k]], -1)).mean()
                )
        rows.append(row)
        log.info("diversity %s", row)
        if not cfg.data.backtest:
            metrics = {m: row[m] for m in METRICS}
            record_test(
                dataset.name, cfg.to_dict(), f"{model.kind} diversity, {row['decoding']}", {"history_ranked": metrics}
            )
    name = next(iter(categories))
    header = [
        "decoding",
        f"Entropy@10 ({name})",
        "Entropy@10 (leaf)",
        "Recall@10",
        "NDCG@10",
        "paper Entropy@10 (Beauty)",
    ]
    table = [
        [
            r["decoding"],
            r[f"entropy@10 ({name})"],
            r["entropy@10 (leaf)"],
            r["recall@10"],
            r["ndcg@10"],
            PAPER_ENTROPY.get(r["temperature"]),
        ]
        for r in rows
    ]
    result = {
        "rows": rows,
        "run_dir": str(run_dir),
        "categories": {n: int(c.max()) + 1 for n, c in categories.items()},
        "entropy": "natural log (nats) of the category distribution among a user's top-K items, "
        "averaged over test users",
    }
    intro = (
        f"Test users ({len(test)}); categories: the {name} name of each item's first category path "
        f"({result['categories'][name]} distinct) and the deepest ({result['categories']['leaf']}). "
        "Entropy in nats.\n\n"
    )
    return result, intro + markdown_table(header, table)


# ------------------------------------------------------------------ ablation


def ablation(source, cfg: RunConfig, out_dir: Path, overwrite: bool = False) -> tuple[dict, str]:
    exp = cfg.experiment
    # Every row starts from random code embeddings (the paper's init): random and LSH IDs have
    # no codewords, and the rows should differ only in their IDs.
    variants = {scheme: [f"ids.scheme={scheme}", "model.embed_init=normal"] for scheme in exp.schemes}
    if exp.user_token_ablation and "rqvae" in exp.schemes:
        variants["rqvae-no-user-token"] = ["ids.scheme=rqvae", "model.embed_init=normal", "model.use_user_token=false"]
    results = {}
    for name, overrides in variants.items():
        run_dir = out_dir / "ablation" / name
        if name == "rqvae-no-user-token":
            # The same IDs as the rqvae row, so the rows differ only in the user token. A copy
            # from earlier rqvae IDs is replaced only with overwrite (run then retrains on it).
            rqvae_ids, copied = out_dir / "ablation" / "rqvae" / IDS_DIR, run_dir / IDS_DIR
            if not copied.exists() or (overwrite and _file_changed(rqvae_ids / IDS_FILE, copied / IDS_FILE)):
                shutil.rmtree(copied, ignore_errors=True)
                shutil.copytree(rqvae_ids, copied)
        metrics = run(source, cfg.override(overrides), run_dir, overwrite)
        results[name] = {
            **{m: metrics["test"][m] for m in METRICS},
            "valid_ndcg@10": metrics["valid"]["ndcg@10"],
            "steps": metrics["training"]["steps"],
            "train_seconds": metrics["training"]["train_seconds"],
            "unique_prefix_share": metrics["semantic_ids"].get("unique_prefix_share"),
        }
    header = ["IDs", "R@5", "N@5", "R@10", "N@10", "steps", "paper R@5", "paper N@10"]
    rows = [
        [
            name,
            *(r[m] for m in METRICS),
            r["steps"],
            PAPER_ABLATION.get(name, {}).get("recall@5"),
            PAPER_ABLATION.get(name, {}).get("ndcg@10"),
        ]
        for name, r in results.items()
    ]
    intro = (
        f"Test metrics, the same model and budget (train.steps={cfg.train.steps}, "
        f"train.max_minutes={cfg.train.max_minutes}) for each ID scheme. Paper figures are for Beauty.\n\n"
    )
    return {"variants": results}, intro + markdown_table(header, rows)


def _file_changed(source: Path, copy: Path) -> bool:
    return not copy.is_file() or source.read_bytes() != copy.read_bytes()


# ------------------------------------------------------------------ baselines


def baselines(source, cfg: RunConfig, out_dir: Path, run_dir: str | Path | None = None) -> tuple[dict, str]:
    """MostPop, Markov, Semantic_KNN and SASRec on the run's split, each test scored under both
    protocols; beside them the row of a finished run (``run_dir``) with paired bootstrap intervals of
    its difference to each baseline when the run kept its test target ranks."""
    # The run's row, read and checked before SASRec trains: it must share the split and ranking rule.
    tiger = None if run_dir is None else _same_protocol_metrics(Path(run_dir), cfg)
    dataset = load_dataset(source, cfg.data.min_interactions)
    split = leave_one_out(dataset, cfg.data.backtest)
    n, k = dataset.num_items, cfg.eval.top_k
    embeddings, _, _ = embed_items(dataset, cfg)
    device, _ = _device_and_bf16(cfg)
    bf16 = use_bf16(device, cfg.sasrec.bf16)
    exclude = cfg.eval.exclude_history  # validation ranks as the run's does: its checkpoint is picked the same way
    # A default run trained this SASRec already, as its item model (``fusion``): the same settings, split
    # and seed give the same model, so it is read, not trained again.
    sasrec_summary = None if run_dir is None else reusable_item_model(run_dir, cfg, n)
    if sasrec_summary is not None:
        log.info("SASRec: the item model of %s, trained with these settings", run_dir)
        sasrec = load_item_model(run_dir, cfg, device)
        sasrec_summary = {**sasrec_summary, "reused_from": str(Path(run_dir) / ITEM_MODEL)}
    else:
        sasrec, sasrec_summary = train_sasrec(
            split.train, n, split.valid_history, split.valid_target, cfg.sasrec, device, exclude_history=exclude
        )
    save_model(sasrec, out_dir / "baselines" / "sasrec.safetensors")
    rankers = {
        "MostPop": partial(most_popular, split.train, n, k=k),
        "Markov (last item)": partial(markov, split.train, n, k=k),
        "Semantic_KNN": partial(semantic_knn, embeddings, k=k, max_history=cfg.data.max_history),
        "SASRec": partial(sasrec_recommend, sasrec, k=k, bf16=bf16),
    }
    results, ranks = {}, {}
    for name, rank in rankers.items():
        results[name], ranks[name] = split_metrics(rank, split, exclude)
        if not cfg.data.backtest:
            record_test(dataset.name, cfg.to_dict(), name, results[name]["test_protocols"])
        log.info("%s test %s", name, results[name]["test_protocols"])
    save_target_ranks(
        out_dir / "baselines" / TARGET_RANKS_FILE,
        {f"{name}/{protocol}": r for name, by_protocol in ranks.items() for protocol, r in by_protocol.items()},
    )
    if tiger is not None:
        config = tiger.get("config", {})  # the row is named after the run's model, and its item model if it fuses one
        name = config.get("model", {}).get("kind", "tiger").upper()
        if config.get("fusion", {}).get("item_model", "none") != "none":
            name += " + SASRec, fused"
        results[name] = _run_row(Path(run_dir), tiger, ranks)
    tables = [f"Test metrics over all {dataset.num_users} users, full catalogue of {n} items.\n"]
    for protocol in PROTOCOLS:
        rows = [[name, *(r["test_protocols"].get(protocol, {}).get(m) for m in METRICS)] for name, r in results.items()]
        if protocol == "history_ranked":  # the TIGER paper's protocol
            rows += [[f"{name} (paper)", *values] for name, values in paper_table1(dataset.name).items()]
        tables.append(f"### {protocol.replace('_', ' ')}\n\n" + markdown_table(["method", *METRIC_LABELS], rows))
    return {"methods": results, "sasrec_training": sasrec_summary}, "\n".join(tables)


METRIC_LABELS = ["R@5", "N@5", "R@10", "N@10"]


def _run_row(run_dir: Path, metrics: dict, baseline_ranks: dict[str, dict[str, np.ndarray]]) -> dict:
    """A finished run's row for the baselines table; with its saved test target ranks, the paired
    bootstrap 95% interval of (run - baseline) for every baseline, protocol and metric."""
    protocol = protocol_name(metrics.get("config", {}).get("eval", {}).get("exclude_history", False))
    row = {"valid": metrics["valid"], "test": metrics["test"], "run_dir": str(run_dir)}
    row["test_protocols"] = metrics.get("test_protocols", {protocol: metrics["test"]})  # older runs: their own only
    run_ranks = load_target_ranks(run_dir / TARGET_RANKS_FILE)
    if run_ranks is not None:
        row["paired_ci95_run_minus"] = {
            name: {
                protocol: {m: paired_bootstrap_ci(run_ranks[protocol], theirs, m) for m in METRICS}
                for protocol, theirs in by_protocol.items()
                if protocol in run_ranks
            }
            for name, by_protocol in baseline_ranks.items()
        }
    return row


def _same_protocol_metrics(run_dir: Path, cfg: RunConfig) -> dict:
    """A finished run's metrics.json; refused when they come from another split (data.backtest) or
    ranking rule (eval.exclude_history) than ``cfg``'s. Settings a run does not record are not compared."""
    metrics = read_json(run_dir / "metrics.json")
    recorded = metrics.get("config", {})
    for section, key in (("data", "backtest"), ("eval", "exclude_history")):
        theirs, ours = recorded.get(section, {}).get(key), getattr(getattr(cfg, section), key)
        if theirs is not None and theirs != ours:
            raise TigerrecError(
                f"{run_dir} was evaluated with {section}.{key}={show_value(theirs)}, these baselines "
                f"with {show_value(ours)}; pass --set {section}.{key}={show_value(theirs)}"
            )
    return metrics


EXPERIMENTS = {"coldstart": coldstart, "diversity": diversity, "ablation": ablation, "baselines": baselines}


def run_experiment(
    name: str, source, cfg: RunConfig, out_dir: str | Path, run_dir: str | Path | None = None, overwrite: bool = False
) -> dict:
    """Run one experiment; writes ``out_dir/<name>.json`` and ``out_dir/<name>.md`` and returns the result.

    ``overwrite`` is ``pipeline.run``'s, for the runs the experiment trains under ``out_dir``."""
    if name not in EXPERIMENTS:
        raise TigerrecError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    if run_dir is not None and name not in ("diversity", "baselines"):
        raise TigerrecError("--run-dir applies to diversity (the model to sample) and baselines (a TIGER row)")
    cfg.validate()
    readable = MODEL_KINDS[cfg.model.kind].id_schemes
    if name == "ablation" and not set(cfg.experiment.schemes) <= set(readable):
        raise TigerrecError(
            f"experiment ablation trains model.kind={cfg.model.kind} on each ID scheme of experiment.schemes "
            f"({', '.join(cfg.experiment.schemes)}), but it reads ids.scheme {', '.join(readable)} only"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extra = {"run_dir": run_dir} if run_dir is not None else {}
    if name in ("coldstart", "diversity", "ablation"):  # the experiments that train runs of their own
        extra["overwrite"] = overwrite
    result, table = EXPERIMENTS[name](source, cfg, out_dir, **extra)
    result = {
        "experiment": name,
        "source": str(source),
        **result,
        "seconds": round(time.perf_counter() - start, 1),
        **provenance(),
        "config": cfg.to_dict(),
        "table": table,
    }
    write_json(out_dir / f"{name}.json", result)
    write_text(out_dir / f"{name}.md", f"# {name}\n\n{table}")
    return result
