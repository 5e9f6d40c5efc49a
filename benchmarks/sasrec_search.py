"""SASRec baseline search on Beauty validation: one short run per setting, one at a time.

Every setting is a list of ``sasrec.key=value`` overrides on top of ``config.SASRecConfig``
(the original paper's sizes). Each run trains for ``--minutes`` of wall-clock time,
validates all users every ``--eval-every`` steps, stops early after ``--patience``
validations without a new best and never touches the test split. Results are merged into
``--results`` (one entry per setting and budget: overrides, full SASRec config, validation
curve against steps, minutes and samples, CPU), so a search can be extended run by run.

    python benchmarks/sasrec_search.py --data-dir ../shared/data/beauty --minutes 20 original drop0.2-heads2

``--list`` prints the settings, ``--table`` the results as Markdown. The chosen setting
becomes the ``sasrec`` defaults that ``tigerrec experiment baselines`` trains.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tigerrec.baselines import train_sasrec
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import machine_name
from tigerrec.io import read_json, write_json
from tigerrec.presets import preset_config

SETTINGS: dict[str, list[str]] = {
    # Kang & McAuley's sizes for the sparse Amazon data: 1 head, dropout 0.5, Adam 1e-3.
    "original": [],
    # Lower dropout with 2 heads, as in the cross-entropy SASRec configs of later reproductions.
    "drop0.2-heads2": ["sasrec.dropout=0.2", "sasrec.heads=2"],
    "drop0.3-heads2": ["sasrec.dropout=0.3", "sasrec.heads=2"],
    "drop0.2-heads2-lr3e-3": ["sasrec.dropout=0.2", "sasrec.heads=2", "sasrec.lr=0.003"],
    "drop0.2-heads2-wd0.1": ["sasrec.dropout=0.2", "sasrec.heads=2", "sasrec.weight_decay=0.1"],
    "drop0.3-heads2-hidden128": ["sasrec.dropout=0.3", "sasrec.heads=2", "sasrec.hidden=128"],
    "drop0.5-heads2-hidden128": ["sasrec.dropout=0.5", "sasrec.heads=2", "sasrec.hidden=128"],
}


def run_setting(name: str, split, num_items: int, args) -> dict:
    cfg = preset_config(args.preset).override([
        *SETTINGS[name], f"sasrec.max_minutes={args.minutes}", "sasrec.steps=100000000",
        f"sasrec.eval_every={args.eval_every}", f"sasrec.patience={args.patience}",
    ])
    cfg.validate()
    start = time.perf_counter()
    _, summary = train_sasrec(split.train, num_items, split.valid_history, split.valid_target, cfg.sasrec)
    return {
        "setting": name, "overrides": SETTINGS[name], "machine": machine_name(), "date": time.strftime("%Y-%m-%d"),
        "budget_minutes": args.minutes, "minutes": round((time.perf_counter() - start) / 60, 2),
        **{key: summary[key] for key in ("steps", "samples", "best_step", "best_valid_ndcg@10", "parameters")},
        "curve": summary["history"], "config": cfg.to_dict()["sasrec"],
    }


def markdown(results: dict) -> str:
    """A summary row per run (best validation point), then every run's validation N@10 curve."""
    lines = ["| setting | machine | minutes | steps | samples | best at step | best valid R@10 | best valid N@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for run in sorted(results["runs"], key=lambda r: -r["best_valid_ndcg@10"]):
        best = max(run["curve"], key=lambda row: row["ndcg@10"])
        lines.append(f"| {run['setting']} ({run['budget_minutes']:g} min) | {run['machine']} | {run['minutes']} | {run['steps']:,} | "
                     f"{run['samples']:,} | {run['best_step']:,} | {best['recall@10']:.4f} | {best['ndcg@10']:.4f} |")
    lines += ["", "Validation N@10 at each evaluation (minutes: samples: N@10):", ""]
    for run in results["runs"]:
        points = ", ".join(f"{row['minutes']:.1f}: {row['samples'] / 1e6:.2f}M: {row['ndcg@10']:.4f}" for row in run["curve"])
        lines.append(f"- {run['setting']} ({run['budget_minutes']:g} min): {points}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="setting names (default: all)")
    parser.add_argument("--data-dir", default="../shared/data/beauty")
    parser.add_argument("--preset", default="beauty")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget per run, validation included")
    parser.add_argument("--eval-every", type=int, default=1000, help="training steps between validations")
    parser.add_argument("--patience", type=int, default=5, help="validations without a new best before stopping; 0 = never")
    parser.add_argument("--results", default="benchmarks/results/sasrec_search.json")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument("--table", action="store_true", help="print --results as Markdown and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown(read_json(args.results)))
        return
    if args.list:
        for name, overrides in SETTINGS.items():
            print(f"{name:28s} {' '.join(overrides) or '(the defaults)'}")
        return
    unknown = [name for name in args.settings if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; --list shows them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    dataset = load_dataset(args.data_dir, preset_config(args.preset).data.min_interactions)
    split = leave_one_out(dataset)
    results_path = Path(args.results)
    for name in args.settings or list(SETTINGS):
        entry = run_setting(name, split, dataset.num_items, args)
        results = read_json(results_path) if results_path.exists() else {"runs": []}
        results["runs"] = [r for r in results["runs"] if (r["setting"], r["budget_minutes"]) != (name, args.minutes)] + [entry]
        write_json(results_path, results)
        best = max(entry["curve"], key=lambda row: row["ndcg@10"])
        print(f"{name}: best valid N@10 {best['ndcg@10']:.4f} R@10 {best['recall@10']:.4f} at step {entry['best_step']:,} "
              f"({best['minutes']} min), {entry['steps']:,} steps in {entry['minutes']} min")


if __name__ == "__main__":
    main()
