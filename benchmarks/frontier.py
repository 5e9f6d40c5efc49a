"""The frontier comparison on one dataset: the default run against the tuned SASRec, on the same users.

    make run DATASET=beauty && make baselines DATASET=beauty
    python benchmarks/frontier.py runs/beauty runs/baselines-beauty \
        --out benchmarks/results/frontier/frontier_beauty.json

Reads the run's ``metrics.json`` and ``test_target_ranks.npz`` and the baselines experiment's
``baselines.json`` and ``baselines/test_target_ranks.npz``. Both must come from the same dataset and
split; their test metrics are not recomputed here. Writes the default's and SASRec's test metrics
under both protocols, the default's end-to-end time and training rate, and the paired bootstrap 95%
interval of (default - SASRec) per user, with history items excluded (the eSASRec benchmark's
protocol, whose published SASRec+SS numbers are printed beside them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tigerrec.evaluate import METRICS, load_target_ranks, paired_bootstrap_ci
from tigerrec.io import read_json, write_json
from tigerrec.rundir import METRICS_FILE, TARGET_RANKS_FILE

# Published SASRec+SS (eSASRec benchmark, RecSys 2025), @10 with viewed items excluded: [R@10, N@10].
PAPER_ROWS = Path(__file__).parent / "results" / "papers" / "paper_rows.json"
PUBLISHED_SASREC_SS = {k: v for k, v in read_json(PAPER_ROWS)["esasrec_sasrec_ss_at10"].items() if k != "source"}
PROTOCOL = "history_excluded"


def frontier(run_dir: Path, baselines_dir: Path, wall_seconds: float | None = None) -> dict:
    run = read_json(run_dir / METRICS_FILE)
    baselines = read_json(baselines_dir / "baselines.json")
    sasrec = baselines["methods"]["SASRec"]
    run_ranks = load_target_ranks(run_dir / TARGET_RANKS_FILE)
    sasrec_ranks = load_target_ranks(baselines_dir / "baselines" / TARGET_RANKS_FILE)
    if run_ranks is None or sasrec_ranks is None:
        raise SystemExit("both the run and the baselines must keep their test target ranks (rerun them)")
    ours, theirs = run_ranks[PROTOCOL], sasrec_ranks[f"SASRec/{PROTOCOL}"]
    timings = run["timings"]
    training = run["training"]
    members = training.get("members", [training])
    samples = sum(m.get("samples", 0) for m in members)
    default = {
        protocol: _metrics(run["test_protocols"][protocol]) for protocol in ("history_excluded", "history_ranked")
    }
    return {
        "dataset": run["dataset"],
        "default": {
            **default,
            # The generative model's own ranking (the run's beam before the item model re-ranks it); a run
            # without an item model is all generative.
            "generative_alone": {
                protocol: _metrics(values)
                for protocol, values in run["test"].get("generative_alone", run["test_protocols"]).items()
            },
            "end_to_end_seconds": round(sum(v for k, v in timings.items() if k.endswith("_seconds")), 1),
            # `make run` timed from outside: the virtual environment, the encoder's unpacking and every stage.
            "make_run_wall_seconds": wall_seconds,
            "run_dir": str(run_dir),
        },
        "sasrec": {
            **{p: _metrics(sasrec["test_protocols"][p]) for p in ("history_excluded", "history_ranked")},
            "train_seconds": baselines["sasrec_training"]["train_seconds"],
            "stopped_by": baselines["sasrec_training"].get("stopped_by"),
            "baselines_dir": str(baselines_dir),
        },
        "paired_ci95_default_minus_sasrec": {m: paired_bootstrap_ci(ours, theirs, m) for m in ("recall@10", "ndcg@10")},
        # What the item model buys: the default against its own generative model, on the same users.
        "paired_ci95_default_minus_generative_alone": {
            m: paired_bootstrap_ci(ours, run_ranks[f"generative_alone/{PROTOCOL}"], m) for m in ("recall@10", "ndcg@10")
        }
        if f"generative_alone/{PROTOCOL}" in run_ranks
        else None,
        "published_sasrec_ss": dict(zip(("recall@10", "ndcg@10"), PUBLISHED_SASREC_SS.get(_key(run["dataset"]), ()))),
        "machine": run.get("machine", "unknown"),
        "samples_per_s": round(samples / timings["train_seconds"], 1) if timings.get("train_seconds") else None,
        "date": run.get("date", "unknown"),
    }


def _metrics(values: dict) -> dict:
    return {m: values[m] for m in METRICS}


def _key(dataset: str) -> str:
    return next((key for key in PUBLISHED_SASREC_SS if key in dataset.lower()), dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("baselines_dir", type=Path)
    parser.add_argument("--wall-seconds", type=float, help="the wall-clock seconds of the `make run` that made run_dir")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    result = frontier(args.run_dir, args.baselines_dir, args.wall_seconds)
    write_json(args.out, result)
    print(args.out, result["paired_ci95_default_minus_sasrec"])


if __name__ == "__main__":
    main()
