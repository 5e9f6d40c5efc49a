"""Does summing TIGER's and SASRec's scores beat each alone? Validation only (the test split is never read).

    python benchmarks/fusion.py runs/beauty-m1 runs/baselines-beauty \
        --out benchmarks/results/2026-12-07-fusion/fusion_valid_beauty.json

TIGER's beam (``--beam`` items per user, history excluded) gives log-probabilities; SASRec gives a
log-softmax over the whole catalogue. The fused score of an item is

    SASRec log-softmax + weight x (TIGER log-probability, or ``floor`` below the beam's last for items
    outside the beam)

(``tigerrec.fusion.fuse``), and the grid over ``weight`` and ``floor`` is scored by Recall and NDCG at 5
and 10 on every validation user, history excluded; reciprocal-rank fusion (1 / (60 + rank) summed) is
the parameter-free reference.
Both models must have been trained on the same split (the run's, and ``tigerrec experiment baselines``
on the same dataset).
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tigerrec.baselines import SASRec, _pad
from tigerrec.config import RunConfig
from tigerrec.data import leave_one_out
from tigerrec.device import autocast, provenance, use_bf16
from tigerrec.evaluate import ranking_metrics, recommend_examples
from tigerrec.fusion import fuse
from tigerrec.io import write_json
from tigerrec.pipeline import held_out_examples, load_trained_run

WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
FLOORS = [0.0, 1.0, 2.0, 4.0]  # how far below the beam's last log-probability an unbeamed item sits


def sasrec_log_softmax(model: SASRec, histories: list[np.ndarray], bf16: bool) -> torch.Tensor:
    tokens = _pad(histories, model.cfg.max_len)
    last = torch.tensor([min(len(h), model.cfg.max_len) - 1 for h in histories])
    with torch.no_grad(), autocast("cpu", bf16):
        states = model(tokens)[torch.arange(len(histories)), last]
        return model.logits(states).float().log_softmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished TIGER run")
    parser.add_argument("baselines_dir", type=Path, help="the --out of `tigerrec experiment baselines` (sasrec)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")

    cfg, dataset, data, _, tiger = load_trained_run(args.run_dir)
    split = leave_one_out(dataset, cfg.data.backtest)
    users = np.arange(len(split.train))
    valid, _ = held_out_examples(split, cfg.data.max_history)
    bf16 = use_bf16("cpu", cfg.train.bf16)
    beam_items, _, beam_scores = recommend_examples(
        tiger, data.tokenizer, data.trie, valid, data.user_tokens, args.beam, args.beam, 512, True, bf16,
        "TIGER valid", exclude_history=True,
    )  # fmt: skip

    sasrec_cfg = RunConfig().sasrec
    sasrec = SASRec(dataset.num_items, sasrec_cfg)
    sasrec.load_state_dict(load_file(str(args.baselines_dir / "baselines" / "sasrec.safetensors")))
    sasrec.eval()

    variants = {"TIGER": [], "SASRec": [], "RRF": []}
    variants.update({f"weight={w:g} floor={f:g}": [] for w, f in itertools.product(WEIGHTS, FLOORS)})
    chunk = 2048
    for begin in range(0, len(users), chunk):
        rows = slice(begin, begin + chunk)
        histories = split.valid_history[rows]
        lsm = sasrec_log_softmax(sasrec, histories, use_bf16("cpu", sasrec_cfg.bf16))
        for r, h in enumerate(histories):
            lsm[r, torch.from_numpy(np.asarray(h, dtype=np.int64))] = float("-inf")
        items, scores = torch.from_numpy(beam_items[rows]), torch.from_numpy(beam_scores[rows]).float()
        variants["TIGER"].append(beam_items[rows, :10])
        variants["SASRec"].append(lsm.topk(10, 1).indices.numpy())
        sasrec_rank = lsm.argsort(1, descending=True).argsort(1).float()
        in_beam = (items >= 0) & torch.isfinite(scores)
        rrf = (1 / (60 + sasrec_rank)).scatter_add(
            1, items.clamp(min=0), torch.where(in_beam, 1 / (60 + torch.arange(args.beam)), 0.0)
        )
        variants["RRF"].append(rrf.topk(10, 1).indices.numpy())
        for w, f in itertools.product(WEIGHTS, FLOORS):
            variants[f"weight={w:g} floor={f:g}"].append(fuse(lsm, items, scores, w, f).topk(10, 1).indices.numpy())
        logging.info("users %d of %d", min(begin + chunk, len(users)), len(users))

    results = {name: ranking_metrics(np.concatenate(parts), split.valid_target) for name, parts in variants.items()}
    best = max((n for n in results if n.startswith("weight")), key=lambda n: results[n]["ndcg@10"])
    write_json(
        args.out,
        {
            "dataset": dataset.name,
            "split": "valid",
            "protocol": "history_excluded",
            "users": len(users),
            "tiger_run": str(args.run_dir),
            "sasrec": str(args.baselines_dir / "baselines" / "sasrec.safetensors"),
            "beam": args.beam,
            "best": best,
            "results": results,
            **provenance(),
        },
    )
    for name in ("TIGER", "SASRec", "RRF", best):
        print(name, {k: round(v, 4) for k, v in results[name].items()})


if __name__ == "__main__":
    main()
