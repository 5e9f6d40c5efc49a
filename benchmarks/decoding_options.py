"""Validation metrics of a finished run under other decoding settings: beam size, history items excluded.

    python benchmarks/decoding_options.py runs/beauty --data-dir ../shared/data/beauty --beams 20 40 \
        --out benchmarks/results/decoding_options_beauty.json

Decodes the run's best checkpoint for every user's validation target (never the test split),
once per (beam size, exclude_history) pair, so the choice of decoding settings is made on
validation like every other setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import evaluate
from tigerrec.io import write_json
from tigerrec.pipeline import load_trained_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the run's dataset (default: the source its config.json records)")
    parser.add_argument("--beams", type=int, nargs="+", default=[20])
    parser.add_argument("--out")
    args = parser.parse_args()

    cfg, dataset, data, _, model = load_trained_run(args.run_dir, args.data_dir)
    bf16 = use_bf16("cpu", cfg.train.bf16)
    rows = []
    for beam in args.beams:
        for exclude in (False, True):
            metrics = evaluate(model, data.tokenizer, data.trie, data.valid, data.user_tokens[data.valid.users], beam, cfg.eval.top_k,
                               cfg.eval.batch_size, bf16, desc=f"beam {beam}", exclude_history=exclude)
            rows.append({"beam_size": beam, "exclude_history": exclude, "valid": metrics})
            print(json.dumps(rows[-1]))
    if args.out:
        write_json(args.out, {"run_dir": str(args.run_dir), "dataset": dataset.name, "results": rows, **provenance()})


if __name__ == "__main__":
    main()
