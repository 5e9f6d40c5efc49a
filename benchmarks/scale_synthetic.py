"""MostPop, Markov, Semantic_KNN and the generating process's own ceiling on ``make_scale`` catalogues.

    python benchmarks/scale_synthetic.py 10000 100000 [--users 20000]

Leave-one-out test Recall@10 with history items excluded, to set beside Beauty's (MostPop .0115, Markov
.0668, Semantic_KNN .0431, SASRec .0775). The baselines are tigerrec's own, the counting ones trained on
every user's training part; all are scored on the same random sample of users as the oracle. Also prints
the generation time, peak memory and the data's shape: lengths, and the share of interactions held by the
10 and the 1% most popular items (Beauty: 1.8% and ~10%). ``--generate-only`` stops after the generation
(how 1M items was timed: ``/usr/bin/time -v python benchmarks/scale_synthetic.py 1000000 --generate-only``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from functools import partial

import numpy as np

from tigerrec.baselines import markov, most_popular, semantic_knn
from tigerrec.data import leave_one_out
from tigerrec.data.synthetic import make_scale, oracle_recall_at_10
from tigerrec.evaluate import ranking_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int)
    parser.add_argument("--users", type=int, default=20_000, help="users scored (a random sample; all if fewer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate-only", action="store_true", help="time the generation only (e.g. at 1M)")
    args = parser.parse_args()
    for n in args.sizes:
        start = time.perf_counter()
        data = make_scale(n, args.seed)
        row = {"items": n, "generate_s": round(time.perf_counter() - start, 1), **data.dataset.stats()}
        row["per_item"] = round(row["interactions"] / n, 2)
        row["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if not args.generate_only:
            counts = np.sort(np.bincount(np.concatenate(data.dataset.sequences), minlength=n))[::-1]
            row["top10_share"] = round(counts[:10].sum() / counts.sum(), 4)
            row["top1pct_share"] = round(counts[: n // 100].sum() / counts.sum(), 4)
            split = leave_one_out(data.dataset)
            users = np.arange(data.dataset.num_users)
            if args.users < len(users):
                users = np.sort(np.random.default_rng(args.seed).choice(len(users), args.users, replace=False))
            histories = [split.test_history[u] for u in users]
            methods = {
                "MostPop": partial(most_popular, split.train, n),
                "Markov": partial(markov, split.train, n),
                "Semantic_KNN": partial(semantic_knn, data.item_vectors),
            }
            for name, method in methods.items():
                ranked = method(histories, k=10, exclude_history=True)
                row[name] = round(ranking_metrics(ranked, split.test_target[users])["recall@10"], 4)
            row["oracle"] = round(oracle_recall_at_10(data, args.users, args.seed), 4)
            row["markov/mostpop"] = round(row["Markov"] / row["MostPop"], 2)
            row["oracle/markov"] = round(row["oracle"] / row["Markov"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
