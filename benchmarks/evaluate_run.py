"""Valid and test metrics of a finished run, decoded again with its own settings by the current code.

    python benchmarks/evaluate_run.py runs/toys \
        --out benchmarks/results/2026-12-03-user-token-full-budget/run_toys_reevaluated.json

For a run made before a change to how evaluation ranks (its metrics.json keeps what was measured
then): the same best checkpoint and eval settings, every user of both splits, as ``tigerrec run``
evaluates at its end. ``--by-popularity`` adds the metrics of the targets grouped by how often
their item occurs in the run's training sequences (``evaluate.metrics_by_popularity``).

With several run directories (same dataset, split and Semantic IDs; the first one's settings decode),
all their models (every member of a run that is itself an ensemble) are decoded as one ensemble
(``model.TigerEnsemble``):

    python benchmarks/evaluate_run.py runs/beauty runs/beauty-seed1 --out ...
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import numpy as np

from tigerrec.device import provenance
from tigerrec.errors import TigerrecError
from tigerrec.io import write_json
from tigerrec.members import load_best_model
from tigerrec.model import TigerEnsemble
from tigerrec.pipeline import load_trained_run, training_counts
from tigerrec.rundir import IDS_DIR, load_ids, read_run_config
from tigerrec.train import evaluate_splits


def models_of(model) -> list:
    """The models a loaded run ranks with: an ensemble's members, or the one model."""
    return list(model.members) if isinstance(model, TigerEnsemble) else [model]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="a run directory, or several to decode as one ensemble")
    parser.add_argument("--data-dir", type=Path, help="the run's dataset (default: the source its config.json records)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--by-popularity", action="store_true", help="also per popularity group of the targets")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    cfg, dataset, data, test, model = load_trained_run(args.run_dirs[0], args.data_dir)
    if len(args.run_dirs) > 1:
        # The first run's data serve all; each other run only loads its weights into copies of one model.
        members = models_of(model)
        for run_dir in args.run_dirs[1:]:
            run_cfg = read_run_config(run_dir)
            if not np.array_equal(load_ids(run_dir / IDS_DIR, run_cfg).codes, data.tokenizer.item_codes.numpy()):
                raise TigerrecError(
                    f"{run_dir} has other Semantic IDs than {args.run_dirs[0]}: an ensemble needs the same IDs"
                )
            members += models_of(load_best_model(copy.deepcopy(members[0]), run_dir, run_cfg.train.members))
        model = TigerEnsemble(members)
        logging.info("decoding %d models from %d runs as one ensemble", len(members), len(args.run_dirs))
    counts = training_counts(dataset, cfg) if args.by_popularity else None
    evals, _ = evaluate_splits(model, data, test, cfg, counts, dataset_name=dataset.name)
    if args.out:
        write_json(
            args.out,
            {
                "run_dirs": [str(d) for d in args.run_dirs],
                "dataset": dataset.name,
                **evals,
                "eval": cfg.to_dict()["eval"],
                **provenance(),
            },
        )


if __name__ == "__main__":
    main()
