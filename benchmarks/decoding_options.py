"""Validation metrics of a finished run under other decoding settings: beam size, history items
excluded, a popularity penalty.

    python benchmarks/decoding_options.py runs/beauty --data-dir ../shared/data/beauty --beams 20 40 \
        --out benchmarks/results/STUDY/decoding_options_beauty.json
    python benchmarks/decoding_options.py runs/beauty --exclude-history on --penalties 0 0.1 0.2 --by-popularity \
        --out benchmarks/results/2026-12-04-backtests/popularity_penalty_beauty.json

Decodes the run's best checkpoint for every user's validation target (never the test split),
once per (beam size, exclude_history, penalty) setting, so the choice of decoding settings is
made on validation like every other setting. ``--penalties`` ranks items by log p(item) minus
the penalty times log(1 + the item's count in the training sequences)
(``decoding.PrefixTrie.penalize_popularity``). A backtest run (``data.backtest`` > 0) may also
be decoded on its test split (``--split test``), whose targets are the real validation items.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import evaluate
from tigerrec.io import write_json
from tigerrec.pipeline import load_trained_run, training_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the run's dataset (default: the source its config.json records)")
    parser.add_argument("--beams", type=int, nargs="+", default=[20])
    parser.add_argument("--exclude-history", choices=["both", "on", "off"], default="both")
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0], help="popularity penalties (0 = none)")
    parser.add_argument("--split", choices=["valid", "test"], default="valid", help="test: backtest runs only")
    parser.add_argument("--by-popularity", action="store_true", help="also per popularity group of the targets")
    parser.add_argument("--out")
    args = parser.parse_args()

    cfg, dataset, data, test, model = load_trained_run(args.run_dir, args.data_dir)
    if args.split == "test" and not cfg.data.backtest:
        parser.error(f"{args.run_dir} is not a backtest run: its test split is only scored once, by `tigerrec run`")
    examples = data.valid if args.split == "valid" else test
    counts = training_counts(dataset, cfg)
    bf16 = use_bf16("cpu", cfg.train.bf16)
    excludes = {"both": (False, True), "on": (True,), "off": (False,)}[args.exclude_history]
    rows = []
    for beam in args.beams:
        for exclude in excludes:
            for penalty in args.penalties:
                data.trie.penalize_popularity(counts, penalty)
                metrics = evaluate(
                    model,
                    data.tokenizer,
                    data.trie,
                    examples,
                    data.user_tokens[examples.users],
                    beam,
                    cfg.eval.top_k,
                    cfg.eval.batch_size,
                    bf16,
                    desc=f"beam {beam}",
                    exclude_history=exclude,
                    counts=counts if args.by_popularity else None,
                )
                rows.append(
                    {"beam_size": beam, "exclude_history": exclude, "popularity_penalty": penalty, args.split: metrics}
                )
                print(json.dumps(rows[-1]))
    if args.out:
        write_json(
            args.out,
            {
                "run_dir": str(args.run_dir),
                "dataset": dataset.name,
                "backtest": cfg.data.backtest,
                "results": rows,
                **provenance(),
            },
        )


if __name__ == "__main__":
    main()
