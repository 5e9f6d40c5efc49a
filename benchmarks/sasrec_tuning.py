"""Tune the SASRec baseline on validation only: one training per setting, its validation curve.

    python benchmarks/sasrec_tuning.py ../shared/data/beauty --name ss64 --set sasrec.hidden=64

Same split (leave-one-out), metrics and training code as ``tigerrec experiment baselines``; the test
split is never read. Validation ranks with the user's history items excluded, as the baselines
experiment does. Writes ``benchmarks/results/2026-12-07-sasrec/tuning_<dataset>_<name>.json``: the settings,
the curve (validation metrics after each epoch, against minutes) and the machine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tigerrec.baselines import train_sasrec
from tigerrec.config import RunConfig
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import provenance
from tigerrec.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--name", required=True, help="names the result file: tuning_<dataset>_<name>.json")
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. sasrec.hidden=256")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/2026-12-07-sasrec"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = RunConfig().override(args.set)
    dataset = load_dataset(args.data_dir, cfg.data.min_interactions)
    split = leave_one_out(dataset, cfg.data.backtest)
    out = args.out_dir / f"tuning_{dataset.name}_{args.name}.json"
    if out.exists():
        raise SystemExit(f"{out} exists: a result file is never reused for another run; pick another --name")
    _, summary = train_sasrec(
        split.train, dataset.num_items, split.valid_history, split.valid_target, cfg.sasrec, "cpu", exclude_history=True
    )
    write_json(
        out,
        {
            "dataset": dataset.name,
            "split": "valid",
            "settings": args.set,
            "sasrec": cfg.sasrec.__dict__,
            **summary,
            **provenance(),
        },
    )
    print(out, {k: v for k, v in summary.items() if k != "history"})


if __name__ == "__main__":
    main()
