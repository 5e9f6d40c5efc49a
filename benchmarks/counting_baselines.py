"""Counting baselines on the benchmark datasets: most-popular and first-order Markov.

    python benchmarks/counting_baselines.py ../shared/data/beauty ../shared/data/toys ../shared/data/sports

Same split (leave-one-out), metrics (all users, full catalogue) and code as
``tigerrec run``; no training, seconds per dataset. Writes one JSON with the
validation and test metrics of each method per dataset and prints Markdown. Each
method ranks with and without the user's own history items (``eval.exclude_history``).
``--backtest 1`` moves the split one step back in time (``data.backtest``): its "test" is
the real validation item. ``--by-popularity`` adds each method's metrics per popularity group of
the targets (how often the target item occurs in training: ``evaluate.metrics_by_popularity``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tigerrec.baselines import markov, most_popular, split_metrics
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import provenance
from tigerrec.evaluate import METRICS, item_counts
from tigerrec.io import write_json


def rankers(train: list, n: int) -> dict:
    """The counting baselines over the training sequences ``train`` of ``n`` items, top 10 each."""
    return {
        "MostPop": lambda h: most_popular(train, n, h, 10),
        "Markov (last item)": lambda h: markov(train, n, h, 10),
        # As TIGER with eval.exclude_history: the user's own items left out of the ranking.
        "MostPop (history excluded)": lambda h: most_popular(train, n, h, 10, exclude_history=True),
        "Markov (history excluded)": lambda h: markov(train, n, h, 10, exclude_history=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--out", default="benchmarks/results/counting_baselines.json")
    parser.add_argument(
        "--backtest", type=int, default=0, help="leave out each user's last N items first (data.backtest)"
    )
    parser.add_argument("--by-popularity", action="store_true", help="also per popularity group of the targets")
    args = parser.parse_args()
    results = {**provenance(), "backtest": args.backtest, "datasets": {}}
    print("| dataset | method | R@5 | N@5 | R@10 | N@10 |\n|---|---|---|---|---|---|")
    for data_dir in args.data_dirs:
        dataset = load_dataset(data_dir, 3 + args.backtest)
        split = leave_one_out(dataset, args.backtest)
        n = dataset.num_items
        counts = item_counts(split.train, n) if args.by_popularity else None
        methods = {}
        for name, rank in rankers(split.train, n).items():
            methods[name] = split_metrics(rank, split, counts)
            print(
                f"| {data_dir.name} | {name} | " + " | ".join(f"{methods[name]['test'][m]:.4f}" for m in METRICS) + " |"
            )
        results["datasets"][data_dir.name] = {"users": dataset.num_users, "items": n, "methods": methods}
    write_json(args.out, results)


if __name__ == "__main__":
    main()
