"""Counting baselines on the benchmark datasets: most-popular and first-order Markov.

    python benchmarks/counting_baselines.py ../shared/data/beauty ../shared/data/toys ../shared/data/sports

Same split (leave-one-out), metrics (all users, full catalogue) and code as
``tigerrec run``; no training, seconds per dataset. Writes one JSON with the
validation and test metrics of each method per dataset and prints Markdown. Each
method's test is scored with and without the user's own history items (``evaluate.PROTOCOLS``).
``--backtest 1`` moves the split one step back in time (``data.backtest``): its "test" is
the real validation item. ``--by-popularity`` adds each method's metrics per popularity group of
the targets (how often the target item occurs in training: ``evaluate.metrics_by_popularity``).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from tigerrec.baselines import markov, most_popular, split_metrics
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import provenance
from tigerrec.evaluate import METRICS, item_counts
from tigerrec.io import write_json
from tigerrec.ledger import record_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--out", default="benchmarks/results/2026-12-03-counting-baselines/counting_baselines.json")
    parser.add_argument(
        "--backtest", type=int, default=0, help="leave out each user's last N items first (data.backtest)"
    )
    parser.add_argument(
        "--history-ranked",
        dest="exclude_history",
        action="store_false",
        help="validate with history items ranked (default: excluded); the test is scored both ways",
    )
    parser.add_argument("--by-popularity", action="store_true", help="also per popularity group of the targets")
    args = parser.parse_args()
    results = {**provenance(), "backtest": args.backtest, "datasets": {}}
    print("| dataset | method | R@5 | N@5 | R@10 | N@10 |\n|---|---|---|---|---|---|")
    for data_dir in args.data_dirs:
        dataset = load_dataset(data_dir, 3 + args.backtest)
        split = leave_one_out(dataset, args.backtest)
        n = dataset.num_items
        rankers = {
            "MostPop": partial(most_popular, split.train, n, k=10),
            "Markov (last item)": partial(markov, split.train, n, k=10),
        }
        counts = item_counts(split.train, n) if args.by_popularity else None
        methods = {}
        for name, rank in rankers.items():
            methods[name], _ = split_metrics(rank, split, args.exclude_history, counts)
            if not args.backtest:
                record_test(
                    dataset.name,
                    {"method": name, "script": "counting_baselines"},
                    name,
                    methods[name]["test_protocols"],
                )
            for protocol, test in methods[name]["test_protocols"].items():
                print(
                    f"| {data_dir.name} | {name} ({protocol}) | " + " | ".join(f"{test[m]:.4f}" for m in METRICS) + " |"
                )
        results["datasets"][data_dir.name] = {"users": dataset.num_users, "items": n, "methods": methods}
    write_json(args.out, results)


if __name__ == "__main__":
    main()
