"""The spread of one recipe's test metrics over seeds: runs that differ only in their seeds.

    make run                                   # seed 0 (the default's figures)
    make run SEED=1 OUT=runs/beauty-seed1
    make run SEED=2 OUT=runs/beauty-seed2
    python benchmarks/seed_spread.py runs/beauty runs/beauty-seed1 runs/beauty-seed2 \
        --out benchmarks/results/STUDY/seed_spread_beauty.json

Reads each run's ``metrics.json`` (its test metrics were computed once, by the run); refuses runs whose
configurations differ in anything but their seeds, or that come from different datasets. Writes each run's
test metrics under both protocols (and its generative model's alone), and per metric the mean, the
sample standard deviation, the minimum and the maximum over the runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tigerrec.evaluate import METRICS
from tigerrec.io import read_json, write_json
from tigerrec.rundir import METRICS_FILE

SEEDS = ("ids.seed", "train.seed", "sasrec.seed")
PROTOCOLS = ("history_excluded", "history_ranked")


def without_seeds(config: dict) -> dict:
    """``config`` (a run's, by section) with the seeds left out."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for key in SEEDS:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    return out


def seeds_of(config: dict) -> dict:
    return {key: config.get(key.split(".")[0], {}).get(key.split(".")[1]) for key in SEEDS}


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 5),
        "std": round(float(array.std(ddof=1)), 5) if len(array) > 1 else None,
        "min": round(float(array.min()), 5),
        "max": round(float(array.max()), 5),
    }


def seed_spread(run_dirs: list[Path]) -> dict:
    runs = [read_json(run_dir / METRICS_FILE) for run_dir in run_dirs]
    first = runs[0]
    for run_dir, run in zip(run_dirs[1:], runs[1:]):
        if run["dataset"] != first["dataset"]:
            raise SystemExit(f"{run_dir} is of {run['dataset']}, {run_dirs[0]} of {first['dataset']}")
        if without_seeds(run["config"]) != without_seeds(first["config"]):
            raise SystemExit(f"{run_dir} and {run_dirs[0]} differ in more than their seeds")
    rows = []
    for run_dir, run in zip(run_dirs, runs):
        alone = run["test"].get("generative_alone", {})
        rows.append(
            {
                "run_dir": str(run_dir),
                "seeds": seeds_of(run["config"]),
                **{protocol: {m: run["test_protocols"][protocol][m] for m in METRICS} for protocol in PROTOCOLS},
                "generative_alone": {p: {m: alone[p][m] for m in METRICS} for p in PROTOCOLS if p in alone},
                "machine": run.get("machine"),
                "date": run.get("date"),
            }
        )
    summary = {protocol: {m: spread([row[protocol][m] for row in rows]) for m in METRICS} for protocol in PROTOCOLS}
    alone_protocols = [p for p in PROTOCOLS if all(p in row["generative_alone"] for row in rows)]
    summary["generative_alone"] = {
        p: {m: spread([row["generative_alone"][p][m] for row in rows]) for m in METRICS} for p in alone_protocols
    }
    return {"dataset": first["dataset"], "runs": rows, "spread": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished runs of one recipe, one per seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.run_dirs) < 2:
        raise SystemExit("a spread needs at least two runs")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    result = seed_spread(args.run_dirs)
    write_json(args.out, result)
    for protocol in PROTOCOLS:
        cells = ", ".join(f"{m} {s['mean']:.4f} ± {s['std']:.4f}" for m, s in result["spread"][protocol].items())
        print(f"{protocol}: {cells}")


if __name__ == "__main__":
    main()
