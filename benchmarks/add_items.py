"""Growing a trained run's catalogue: the time to add new items, and that nothing old changes.

Copies RUN_DIR, recommends for a sample of its users (their test histories), adds ``--count``
items taken from another dataset's catalogue (``--new-items-from``, ids prefixed so they are
new), and checks on the copy that every existing item keeps its Semantic ID and that the same
users get the same recommendations when new items are kept out (``max_new_share=0``). Also
reports how many new items enter the top 10 with no cap and with the paper's 10% cap.

    python benchmarks/add_items.py runs/beauty --data-dir ../shared/data/beauty \\
        --new-items-from ../shared/data/toys --count 1000 \\
        --out benchmarks/results/2026-11-30-add-items/add_items_beauty.json
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import provenance
from tigerrec.io import write_json
from tigerrec.recommend import Recommender


def recommend_all(recommender: Recommender, histories: list[list[str]], **options) -> list[list[str]]:
    results = recommender.recommend_batch(histories, k=10, **options)
    return [[r["item_id"] for r in rows] for rows in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished run directory (TIGER or RPG)")
    parser.add_argument(
        "--data-dir", required=True, help="the dataset the run was trained on (for its users' histories)"
    )
    parser.add_argument("--new-items-from", required=True, help="a dataset whose items are added as new ones")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--users", type=int, default=2000, help="users whose recommendations are compared")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    dataset = load_dataset(args.data_dir)
    split = leave_one_out(dataset)
    users = np.random.default_rng(0).choice(
        len(split.test_history), min(args.users, len(split.test_history)), replace=False
    )
    histories = [[dataset.item_ids[i] for i in split.test_history[u]] for u in users]
    source = load_dataset(args.new_items_from)
    prefix = f"{source.name}:"
    new_items = {prefix + item: meta for item, meta in list(zip(source.item_ids, source.item_meta))[: args.count]}

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = shutil.copytree(args.run_dir, Path(tmp) / "run")
        before = Recommender.load(run_dir, device="cpu")
        old_codes = before.ids.codes.copy()
        expected = recommend_all(before, histories)
        start = time.perf_counter()
        summary = before.add_items(new_items)
        add_seconds = time.perf_counter() - start
        after = Recommender.load(run_dir, device="cpu")  # as a fresh process (or a reloaded server) sees it
        ids_unchanged = bool(
            (after.ids.codes[: len(old_codes)] == old_codes).all()
            and after.item_ids[: len(old_codes)] == before.item_ids[: len(old_codes)]
        )
        kept_out = recommend_all(after, histories, max_new_share=0)
        uncapped = recommend_all(after, histories)
        capped = recommend_all(after, histories, max_new_share=0.1)

    def new_per_list(lists):
        return float(np.mean([sum(item.startswith(prefix) for item in rows) for rows in lists]))

    result = {
        "run_dir": str(args.run_dir),
        "model": after.model.kind,
        "dataset": dataset.name,
        "new_items_from": source.name,
        "added": summary["added"],
        "items_before": len(old_codes),
        "items_after": after.num_items,
        "add_seconds": round(add_seconds, 2),
        "users_compared": len(histories),
        "existing_ids_unchanged": ids_unchanged,
        "recommendations_unchanged_with_new_items_kept_out": kept_out == expected,
        "lists_identical_share": float(np.mean([a == b for a, b in zip(kept_out, expected)])),
        "mean_new_items_in_top10": {"no cap": new_per_list(uncapped), "max_new_share=0.1": new_per_list(capped)},
        **provenance(),
    }
    print(result)
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
