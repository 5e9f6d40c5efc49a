"""Valid and test metrics of a finished run, decoded again with its own settings by the current code.

    python benchmarks/evaluate_run.py runs/toys --out benchmarks/results/run_toys_reevaluated.json

For a run made before a change to how evaluation ranks (its metrics.json keeps what was measured
then): the same best checkpoint and eval settings, every user of both splits, as ``tigerrec run``
evaluates at its end. ``--by-popularity`` adds the metrics of the targets grouped by how often
their item occurs in the run's training sequences (``evaluate.metrics_by_popularity``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tigerrec.device import provenance
from tigerrec.io import write_json
from tigerrec.pipeline import evaluate_splits, load_trained_run, training_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the run's dataset (default: the source its config.json records)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--by-popularity", action="store_true", help="also per popularity group of the targets")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    cfg, dataset, data, test, model = load_trained_run(args.run_dir, args.data_dir)
    counts = training_counts(dataset, cfg) if args.by_popularity else None
    evals = evaluate_splits(model, data, test, cfg, counts)
    if args.out:
        write_json(args.out, {"run_dir": str(args.run_dir), "dataset": dataset.name, **evals,
                              "eval": cfg.to_dict()["eval"], **provenance()})


if __name__ == "__main__":
    main()
