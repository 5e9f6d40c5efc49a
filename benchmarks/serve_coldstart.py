"""Does the HTTP API serve the cold-start experiment's guided lists? The share of cold users whose served
top 10 equals the experiment's.

    tigerrec experiment coldstart beauty --out runs/coldstart-beauty
    python benchmarks/serve_coldstart.py runs/coldstart-beauty --data-dir ../shared/data/beauty \\
        --out benchmarks/results/2026-12-07-serving/serve_coldstart_beauty.json

The experiment's run (``coldstart/``, trained without the unseen items) is copied; its unseen items are
added to the copy with ``tigerrec add-items`` (their metadata, embedded by the run's encoder), and the
copy is served in process (FastAPI's TestClient: the real routes and batcher). Each test user whose
target is unseen asks for 10 items with one reserved new-item slot (``max_new_share`` 0.1,
``reserve_new``), history items ranked as the experiment ranks them (``exclude_seen`` false; the new
ones among them excluded, as its guided ranking excludes them). Their
lists are compared with the experiment's guided lists at epsilon 0.1, computed here by the experiment's
own code (``experiments.ColdStart``, ``new_items.guided_rank``, ``decoding.merge_capped``) with the pull
the served run uses (``eval.new_item_pull``). The experiment ranks the seen items by the generative model
alone, so the copy is served without the default's item-model re-ranking (``fusion.item_model``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from tigerrec.catalogue import add_items
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.decoding import ItemFilter, merge_capped, new_item_cap
from tigerrec.device import provenance
from tigerrec.experiments import ColdStart, pick_unseen
from tigerrec.io import read_json, write_json
from tigerrec.new_items import guided_rank
from tigerrec.rundir import read_run_config
from tigerrec.serve import create_app

SHARE, K = 0.1, 10


def experiment_lists(setting: ColdStart, cold) -> list[list[str]]:
    """The experiment's "guided reserved eps=0.1" top 10 of each cold user, as item ids."""
    cfg = setting.cfg
    seen_best, _, seen_scores = setting.decode(cold, setting.seen)
    guides = cfg.eval.new_item_guides
    guided = guided_rank(
        setting.embeddings, cold.histories, seen_best[:, :guides], seen_scores[:, :guides],
        np.flatnonzero(~setting.seen), ItemFilter(cold.histories), cfg.eval.new_item_pull, K, cfg.data.max_history,
    )  # fmt: skip
    merged, _ = merge_capped(seen_best, seen_scores, *guided, new_item_cap(SHARE, K), K, True)
    return [[setting.ids.item_ids[i] for i in row if i >= 0] for row in merged]


def compare(experiment_out: Path, source) -> dict:
    """Serve the experiment's run with its unseen items added, and compare the lists (see above)."""
    run_dir = Path(experiment_out) / "coldstart"
    cfg = read_run_config(run_dir)
    dataset = load_dataset(source, cfg.data.min_interactions)
    split = leave_one_out(dataset)
    unseen = pick_unseen(split.test_target, cfg.experiment.unseen_share, cfg.experiment.seed)
    setting = ColdStart(dataset, unseen, cfg, run_dir)
    cold = setting.users(split.test_target, split.test_history)
    expected = experiment_lists(setting, cold)
    users = np.flatnonzero(np.isin(split.test_target, unseen))

    new = {dataset.item_ids[i] for i in unseen}
    with tempfile.TemporaryDirectory() as tmp:
        served_run = Path(shutil.copytree(run_dir, Path(tmp) / "run"))
        # The experiment ranks the seen items by the generative model alone: so does the copy, without the
        # item model's re-ranking (fusion.item_model), so that the lists differ only where the rules do.
        config = read_json(served_run / "config.json")
        write_json(served_run / "config.json", {**config, "fusion": {**config.get("fusion", {}), "item_model": "none"}})
        add_items(served_run, {dataset.item_ids[i]: dataset.item_meta[i] for i in unseen})
        served = []
        with TestClient(create_app(served_run)) as client:
            for user in users:
                history = [dataset.item_ids[i] for i in split.test_history[user]]
                body = {
                    "history": history,
                    "user_id": dataset.user_ids[user],
                    "k": K,
                    "exclude_seen": False,
                    "exclude": [item for item in history if item in new],  # as the experiment's guided ranking
                    "max_new_share": SHARE,
                    "reserve_new": True,
                }
                response = client.post("/recommend", json=body)
                response.raise_for_status()
                served.append([r["item_id"] for r in response.json()["recommendations"]])
    same = [a == b for a, b in zip(served, expected)]
    same_sets = [set(a) == set(b) for a, b in zip(served, expected)]
    new_same = [[i for i in a if i in new] == [i for i in b if i in new] for a, b in zip(served, expected)]
    return {
        "dataset": dataset.name,
        "experiment_out": str(experiment_out),
        "cold_users": len(users),
        "unseen_items": len(unseen),
        "max_new_share": SHARE,
        "pull": cfg.eval.new_item_pull,
        "same_list_share": round(float(np.mean(same)), 4),
        "same_items_share": round(float(np.mean(same_sets)), 4),
        "same_new_items_share": round(float(np.mean(new_same)), 4),
        "examples_differing": [
            {"user": dataset.user_ids[u], "served": a, "experiment": b}
            for u, a, b, s in zip(users, served, expected, same)
            if not s
        ][:5],
        **provenance(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_out", type=Path, help="the --out of `tigerrec experiment coldstart`")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    result = compare(args.experiment_out, args.data_dir)
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k != "examples_differing"})


if __name__ == "__main__":
    main()
