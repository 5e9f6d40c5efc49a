"""The cost of a growing catalogue, side by side: tigerrec's generative model (TIGER, the tuned recipe,
one model) and the project's SASRec (sampled softmax, exact top-k scoring), at 10k, 100k and 1M items
of the synthetic scale data (``tigerrec.data.synthetic.make_scale``: ~16 interactions per item).

    python benchmarks/scale.py --items 10000 100000 1000000 \
        --out benchmarks/results/2026-12-07-scale/scale.json

Each size runs in a process of its own, so its peak RSS (ru_maxrss over generation, IDs, training,
evaluation, serving, add-items and the baselines together) is its own. Both models train for the same
minutes at a size (``--minutes``, one per size: a fixed budget, not convergence). Validation during
training and the test use fixed samples of users (``--users``), the same users for every method; every
ranking keeps the user's history items out. The run goes through ``tigerrec.pipeline.run`` on the item
vectors as a file (``text.embeddings_file``), as a user with their own vectors would.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tigerrec.baselines import markov, most_popular, sasrec_recommend, train_sasrec
from tigerrec.catalogue import add_items
from tigerrec.config import SASRecConfig
from tigerrec.data import leave_one_out
from tigerrec.data.synthetic import make_scale, oracle_recall_at_10
from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import load_target_ranks, target_ranks
from tigerrec.io import write_json, write_text
from tigerrec.pipeline import run
from tigerrec.presets import recipe_config
from tigerrec.recommend import Recommender
from tigerrec.report import PLOT_STYLE, line_chart
from tigerrec.rundir import TARGET_RANKS_FILE

HISTORY_EXCLUDED = "history_excluded"
SINGLE_REQUESTS = 200  # one-user calls timed for the single-request figures
NEW_ITEMS = 1_000  # added after training


def recall_row(ranks: np.ndarray) -> dict:
    """Recall@10 and its standard error over users, from 0-based target ranks (-1: not ranked)."""
    hits = ((ranks >= 0) & (ranks < 10)).astype(np.float64)
    return {"recall@10": round(float(hits.mean()), 5), "se": round(float(hits.std() / math.sqrt(len(hits))), 5)}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 2)


def measure(num_items: int, minutes: float, users: int, work: Path) -> dict:
    """One catalogue size, end to end; the row of scale.json."""
    work.mkdir(parents=True, exist_ok=True)
    row: dict = {"items": num_items, "minutes_per_model": minutes}
    data, row["generate_seconds"] = timed(make_scale, num_items, seed=0)
    dataset = data.dataset
    row.update(users=dataset.num_users, interactions=dataset.num_interactions, eval_users=users)
    vectors = work / "vectors.npz"
    np.savez(vectors, item_ids=np.array(dataset.item_ids), embeddings=data.item_vectors)
    cfg = recipe_config("tuned").override(
        [
            f"text.embeddings_file={vectors}",
            "train.members=1",
            "fusion.item_model=none",  # the generative model alone: SASRec is measured beside it
            f"train.max_minutes={minutes}",
            "train.eval_every=0",
            f"train.eval_every_minutes={minutes / 4}",
            f"train.valid_users={users}",
            f"eval.users={users}",
            "eval.exclude_history=true",
        ]
    )
    run_dir = work / "run"
    metrics = run(dataset, cfg, run_dir, overwrite=True)
    ids = metrics["semantic_ids"]
    training = metrics["training"]
    row.update(
        ids_seconds=metrics["timings"]["ids_seconds"],
        unique_prefix_share=ids["unique_prefix_share"],
        max_collision_group=ids["max_collision_group"],
        id_length=ids.get("id_length"),
    )
    tiger = {
        "parameters": training["parameters"],
        "train_seconds": metrics["timings"]["train_seconds"],
        "train_samples_per_s": training["samples_per_s"],
        "stopped_by": training.get("stopped_by"),
        **recall_row(load_target_ranks(run_dir / TARGET_RANKS_FILE)[HISTORY_EXCLUDED]),
    }

    # The same users as the run's test (train.evaluate_splits draws them so).
    sample = np.sort(np.random.default_rng(cfg.train.seed).choice(dataset.num_users, users, replace=False))
    split = leave_one_out(dataset)
    histories = [split.test_history[u] for u in sample]
    targets = split.test_target[sample]
    id_histories = [[dataset.item_ids[i] for i in h] for h in histories]

    recommender = Recommender.load(run_dir)
    row["trie_mb"] = round(recommender.trie.nbytes() / 1e6, 1)
    row["ids_table_mb"] = round(recommender.ids.codes.nbytes / 1e6, 1)  # the Semantic ID of every item
    _, seconds = timed(recommender.recommend_batch, id_histories, k=10)
    tiger["decode_ms_per_user_batched"] = round(1000 * seconds / len(id_histories), 3)
    single = [timed(recommender.recommend, h, k=10)[1] for h in id_histories[:SINGLE_REQUESTS]]
    tiger["decode_ms_per_user_single"] = percentile_ms(single, 50)
    tiger.update(serving(recommender, id_histories[:SINGLE_REQUESTS]))

    row["add_items"] = added(run_dir, data, work)
    row["tiger"] = tiger
    row["mostpop"] = recall_row(target_ranks(most_popular(split.train, num_items, histories, 10, True), targets))
    row["markov"] = recall_row(target_ranks(markov(split.train, num_items, histories, 10, True), targets))
    row["sasrec"] = sasrec_row(split, sample, histories, targets, num_items, minutes)
    # The process's own ranking, on the same users (its sample is drawn the same way, with seed 0).
    assert cfg.train.seed == 0
    row["oracle"] = {"recall@10": round(oracle_recall_at_10(data, users, seed=0), 5)}
    # The columns the issue names, TIGER's, with the others beside them in their own sections.
    row.update(
        decode_ms_per_user_batched=tiger["decode_ms_per_user_batched"],
        train_samples_per_s=tiger["train_samples_per_s"],
        **{"test_recall@10": tiger["recall@10"]},
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return row


def serving(recommender: Recommender, histories: list[list[str]]) -> dict:
    """Latency of POST /recommend, one request at a time, client in the same process (FastAPI's TestClient)."""
    from fastapi.testclient import TestClient

    from tigerrec.serve import create_app

    with TestClient(create_app(recommender)) as client:
        seconds = []
        for history in histories:
            start = time.perf_counter()
            response = client.post("/recommend", json={"history": history, "k": 10})
            seconds.append(time.perf_counter() - start)
            response.raise_for_status()
    return {"serve_p50_ms": percentile_ms(seconds, 50), "serve_p99_ms": percentile_ms(seconds, 99)}


def added(run_dir: Path, data, work: Path) -> dict:
    """``add_items`` of new items whose vectors lie near existing ones, then one request that ranks them."""
    rng = np.random.default_rng(1)
    near = data.item_vectors[rng.choice(len(data.item_vectors), NEW_ITEMS, replace=False)]
    vectors = near + 0.05 * rng.standard_normal(near.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    new_ids = [f"new{i}" for i in range(NEW_ITEMS)]
    path = work / "new_vectors.npz"
    np.savez(path, item_ids=np.array(new_ids), embeddings=vectors)
    summary, seconds = timed(add_items, run_dir, {item: {} for item in new_ids}, path)
    recommender = Recommender.load(run_dir)
    history = [data.dataset.item_ids[0]]
    reserved = recommender.recommend(history, k=10, max_new_share=0.2, reserve_new=True)
    return {
        "added": summary["added"],
        "seconds": round(seconds, 2),
        "items_after": recommender.num_items,
        "new_in_top10_with_reserve": sum(r["item_id"].startswith("new") for r in reserved),
    }


def sasrec_row(split, sample, histories, targets, num_items: int, minutes: float) -> dict:
    """The project's SASRec with a 256-negative sampled softmax (a full softmax over a million items
    would not train on this machine), validated on the sampled users, for the same minutes."""
    cfg = SASRecConfig(negatives=256, max_minutes=minutes, epochs=200)
    valid_histories = [split.valid_history[u] for u in sample]
    model, summary = train_sasrec(
        split.train, num_items, valid_histories, split.valid_target[sample], cfg, exclude_history=True
    )
    bf16 = use_bf16("cpu", cfg.bf16)
    ranked, seconds = timed(sasrec_recommend, model, histories, 10, bf16=bf16, exclude_history=True)
    single = [timed(sasrec_recommend, model, [h], 10, bf16=bf16, exclude_history=True)[1] for h in histories[:200]]
    return {
        "parameters": summary["parameters"],
        "train_seconds": summary["train_seconds"],
        "train_samples_per_s": summary["samples_per_s"],
        "epochs": summary["epochs"],
        "stopped_by": summary["stopped_by"],
        "decode_ms_per_user_batched": round(1000 * seconds / len(histories), 3),
        "decode_ms_per_user_single": percentile_ms(single, 50),
        **recall_row(target_ranks(ranked, targets)),
    }


def figure(rows: list[dict]) -> str:
    """SVG: per-user decode cost, parameters and test recall against the catalogue size."""
    x = [math.log10(r["items"]) for r in rows]
    charts = [
        line_chart(
            [
                ("TIGER", x, [r["tiger"]["decode_ms_per_user_batched"] for r in rows]),
                ("SASRec", x, [r["sasrec"]["decode_ms_per_user_batched"] for r in rows]),
            ],
            "Decode ms per user (batched, history excluded)",
            "log10 items",
            "ms / user",
            y_min=0,
        ),
        line_chart(
            [
                ("TIGER", x, [r["tiger"]["parameters"] / 1e6 for r in rows]),
                ("SASRec", x, [r["sasrec"]["parameters"] / 1e6 for r in rows]),
            ],
            "Parameters",
            "log10 items",
            "millions",
            y_min=0,
        ),
        line_chart(
            [
                ("TIGER", x, [r["tiger"]["recall@10"] for r in rows]),
                ("SASRec", x, [r["sasrec"]["recall@10"] for r in rows]),
                ("Markov", x, [r["markov"]["recall@10"] for r in rows]),
                ("MostPop", x, [r["mostpop"]["recall@10"] for r in rows]),
            ],
            "Test Recall@10 (history excluded)",
            "log10 items",
            "Recall@10",
            y_min=0,
        ),
    ]
    # One SVG file: the charts stacked, with the report's chart styles.
    height = 320
    stacked = "".join(chart.replace("<svg ", f'<svg y="{n * height}" ', 1) for n, chart in enumerate(charts))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{height * len(charts)}">'
        f"<style>{PLOT_STYLE}</style>{stacked}</svg>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--minutes", type=float, nargs="+", default=[4, 8, 12], help="training minutes per size")
    parser.add_argument("--users", type=int, default=5_000, help="validation and test users per size")
    parser.add_argument("--work", default="runs/scale", help="where the data and runs go")
    parser.add_argument("--out", required=True, help="scale.json; the figure goes beside it")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args()
    if args.one:
        minutes = dict(zip(args.items, args.minutes))[args.one]
        row = measure(args.one, minutes, args.users, Path(args.work) / str(args.one))
        write_json(Path(args.work) / f"row_{args.one}.json", row)
        return
    rows = []
    for num_items in args.items:
        command = [sys.executable, __file__, "--one", str(num_items), "--items", *map(str, args.items)]
        command += ["--minutes", *map(str, args.minutes), "--users", str(args.users), "--work", args.work]
        command += ["--out", args.out]
        subprocess.run(command, check=True)
        rows.append(json.loads((Path(args.work) / f"row_{num_items}.json").read_text()))
        out = {"command": " ".join(sys.argv), **provenance(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
        write_json(Path(args.out), out)  # after every size, so a late failure keeps the earlier rows
    write_text(Path(args.out).with_suffix(".svg"), figure(rows))


if __name__ == "__main__":
    main()
