"""Table 1 across datasets: the test metrics of finished runs next to the paper's rows.

    python benchmarks/table1.py benchmarks/results/2026-12-06-ensemble/run_beauty_ensemble.json \
        benchmarks/results/2026-12-06-ensemble/run_toys_ensemble.json ...

Each argument is a run's ``metrics.json`` (as written by ``tigerrec run``). Prints a
Markdown table per dataset with the model kind, the training budget, the machine and the
share of the TIGER paper; RPG runs also get the RPG paper's NDCG@10.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tigerrec.evaluate import METRICS
from tigerrec.io import read_json
from tigerrec.presets import RPG_PAPER_NDCG10, paper_table1


def table(metrics: dict) -> str:
    dataset, training = metrics["dataset"], metrics["training"]
    # Samples = training targets seen (recorded since causal histories; before, one per example).
    samples = training.get("samples") or training["steps"] * metrics["config"]["train"]["batch_size"]
    budget = f"{training['train_seconds'] / 60:.0f} min, {training['steps']:,} steps, {samples / 1e6:.2f}M samples"
    kind = metrics["config"]["model"].get("kind", "tiger").upper()  # runs from before RPG are TIGER
    paper_rows = paper_table1(dataset)
    rows = [[f"{method} (TIGER paper)", *values] for method, values in paper_rows.items()]
    rpg_paper = next((v for key, v in RPG_PAPER_NDCG10.items() if key in dataset.lower()), None)
    if kind == "RPG" and rpg_paper:
        rows.append(["RPG (RPG paper)", None, None, None, rpg_paper])
    rows.append([f"{kind} (tigerrec), test ({budget})", *(metrics["test"][m] for m in METRICS)])
    rows.append([f"{kind} (tigerrec), validation (all users)", *(metrics["valid"][m] for m in METRICS)])
    paper = paper_rows.get("TIGER")
    lines = [
        f"### {dataset}",
        "",
        f"{metrics.get('machine', 'machine not recorded')}",
        "",
        "| method | R@5 | N@5 | R@10 | N@10 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        "| " + " | ".join([row[0], *(f"{v:.4f}".lstrip("0") if v is not None else "" for v in row[1:])]) + " |"
        for row in rows
    ]
    if paper:
        shares = (metrics["test"][m] / p for m, p in zip(METRICS, paper))
        lines.append("| test / TIGER paper | " + " | ".join(f"{s:.0%}" for s in shares) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="metrics.json files of finished runs")
    args = parser.parse_args()
    print("\n".join(table(read_json(path)) for path in args.runs))


if __name__ == "__main__":
    main()
