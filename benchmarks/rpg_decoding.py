"""RPG's graph-constrained decoding against exact scoring, on a finished RPG run's test users.

For each (neighbours, steps, beam) setting: the time to build the item graph, users per second,
the share of exact scoring's top 10 that graph decoding also returns (overlap@10), and the test
metrics of both. One process, one setting after another, so the speeds compare as ratios.

    python benchmarks/rpg_decoding.py runs/beauty-rpg --data-dir ../shared/data/beauty \\
        --neighbors 50 --steps 1 2 3 --beams 20 50 --out benchmarks/results/2026-11-30-rpg/rpg_decoding_beauty.json
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from tigerrec.config import MODEL_KINDS
from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import ranking_metrics, recommend_examples
from tigerrec.io import write_json
from tigerrec.pipeline import load_trained_run
from tigerrec.rundir import read_run_config


def decode(model, data, test, cfg, beam: int, bf16: bool) -> tuple[np.ndarray, float]:
    """Top-10 items of every test user and the users per second."""
    start = time.perf_counter()
    ranked, _, _ = recommend_examples(
        model,
        data.tokenizer,
        None,
        test,
        data.user_tokens[test.users],
        beam,
        10,
        cfg.eval.batch_size,
        bf16=bf16,
        desc="test",
    )
    return ranked, len(test) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished RPG run directory (tigerrec run ... --model rpg)")
    parser.add_argument(
        "--data-dir", help="the dataset the run was trained on (default: the source its config.json records)"
    )
    parser.add_argument("--neighbors", type=int, nargs="+", default=[50])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--beams", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    kind = read_run_config(args.run_dir).model.kind  # before loading anything: fail fast
    if "graph" not in MODEL_KINDS[kind].decodings:
        parser.error(f"{args.run_dir} holds a {kind} model, which has no graph decoding (RPG's)")
    cfg, dataset, data, test, model = load_trained_run(args.run_dir, args.data_dir)
    bf16 = use_bf16(str(next(model.parameters()).device), cfg.train.bf16)
    torch.set_grad_enabled(False)

    exact, exact_speed = decode(model, data, test, cfg, 10, bf16)
    rows = [
        {
            "decoding": "exact",
            "users_per_second": round(exact_speed, 1),
            "overlap@10": 1.0,
            **ranking_metrics(exact, test.targets),
        }
    ]
    print(f"exact: {exact_speed:,.0f} users/s, N@10 {rows[0]['ndcg@10']:.4f}")
    for neighbors in args.neighbors:
        start = time.perf_counter()
        model.use_graph_decoding(neighbors, steps=1)
        build_seconds = time.perf_counter() - start
        for steps, beam in itertools.product(args.steps, args.beams):
            model.graph_steps = steps  # the graph stays; only the walk changes
            ranked, speed = decode(model, data, test, cfg, beam, bf16)
            overlap = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(ranked.tolist(), exact.tolist())])
            row = {
                "decoding": "graph",
                "neighbors": neighbors,
                "steps": steps,
                "beam": beam,
                "graph_build_seconds": round(build_seconds, 1),
                "users_per_second": round(speed, 1),
                "speed_vs_exact": round(speed / exact_speed, 2),
                "overlap@10": round(float(overlap), 4),
                **ranking_metrics(ranked, test.targets),
            }
            rows.append(row)
            print(
                f"graph n={neighbors} q={steps} b={beam}: overlap@10 {overlap:.3f}, {speed:,.0f} users/s "
                f"({row['speed_vs_exact']}x exact), N@10 {row['ndcg@10']:.4f}"
            )
    result = {
        "run_dir": str(args.run_dir),
        "dataset": dataset.name,
        "items": dataset.num_items,
        "test_users": len(test),
        **provenance(),
        "rows": rows,
    }
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
