"""Does summing TIGER's and SASRec's scores beat each alone? Chosen on validation, tested once.

    python benchmarks/fusion.py runs/beauty-m1 runs/baselines-beauty \\
        --out benchmarks/results/2026-12-07-fusion/fusion_valid_beauty.json
    python benchmarks/fusion.py runs/beauty-m1 runs/baselines-beauty --test 1.0 2.0 \\
        --out benchmarks/results/2026-12-07-fusion/fusion_test_beauty.json

TIGER's beam (``--beam`` items per user) gives log-probabilities; SASRec gives a log-softmax over the
whole catalogue. The fused score of an item (``tigerrec.fusion.fuse``) is

    SASRec log-softmax + weight x (TIGER log-probability, or ``floor`` below the beam's last for items
    outside the beam).

Without ``--test``: the grid over ``weight`` and ``floor`` on every validation user, history excluded
(the test split is never read); reciprocal-rank fusion (1 / (60 + rank) summed) is the parameter-free
reference. With ``--test WEIGHT FLOOR``: that one setting on the test split under both protocols, its
target ranks, and paired bootstrap 95% intervals against SASRec and TIGER alone (the ranks their own
runs saved), recorded in the test ledger. Both models must come from the same dataset and split: the
TIGER run and ``tigerrec experiment baselines`` (``make baselines``) with the default SASRec settings.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tigerrec.baselines import SASRec, sasrec_scores
from tigerrec.config import RunConfig
from tigerrec.data import leave_one_out
from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import (
    METRICS,
    load_target_ranks,
    mean_metrics,
    paired_bootstrap_ci,
    ranking_metrics,
    recommend_examples,
    target_ranks,
)
from tigerrec.fusion import fuse
from tigerrec.io import write_json
from tigerrec.ledger import record_test
from tigerrec.pipeline import held_out_examples, load_trained_run
from tigerrec.rundir import TARGET_RANKS_FILE
from tigerrec.sequences import history_pairs

WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
FLOORS = [0.0, 1.0, 2.0, 4.0]  # how far below the beam's last log-probability an unbeamed item sits
CHUNK = 2048  # users scored at once: (CHUNK, items) float32


def sasrec_log_softmax(model: SASRec, histories: list[np.ndarray], exclude_history: bool) -> torch.Tensor:
    scores = sasrec_scores(model, histories, use_bf16("cpu", model.cfg.bf16)).log_softmax(1)
    if exclude_history:
        scores[history_pairs(histories, scores.device)] = float("-inf")
    return scores


class Models:
    """The TIGER run and the baselines' SASRec, on the run's dataset and split."""

    def __init__(self, run_dir: Path, baselines_dir: Path, beam: int):
        self.run_dir, self.baselines_dir, self.beam = run_dir, baselines_dir, beam
        self.cfg, self.dataset, self.data, _, self.tiger = load_trained_run(run_dir)
        self.split = leave_one_out(self.dataset, self.cfg.data.backtest)
        self.valid, self.test = held_out_examples(self.split, self.cfg.data.max_history)
        self.sasrec = SASRec(self.dataset.num_items, RunConfig().sasrec)
        self.sasrec.load_state_dict(load_file(str(baselines_dir / "baselines" / "sasrec.safetensors")))
        self.sasrec.eval()

    def beams(self, examples, exclude_history: bool) -> tuple[np.ndarray, np.ndarray]:
        items, _, scores = recommend_examples(
            self.tiger, self.data.tokenizer, self.data.trie, examples, self.data.user_tokens[examples.users],
            self.beam, self.beam,
            self.cfg.eval.batch_size, True, use_bf16("cpu", self.cfg.train.bf16), "TIGER",
            exclude_history=exclude_history,
        )  # fmt: skip
        return items, scores

    def chunks(self, histories, examples, exclude_history: bool):
        """(rows, SASRec log-softmax, TIGER beam items, beam scores) per chunk of users."""
        beam_items, beam_scores = self.beams(examples, exclude_history)
        for begin in range(0, len(histories), CHUNK):
            rows = slice(begin, begin + CHUNK)
            lsm = sasrec_log_softmax(self.sasrec, histories[rows], exclude_history)
            yield rows, lsm, torch.from_numpy(beam_items[rows]), torch.from_numpy(beam_scores[rows]).float()


def validation_grid(models: Models) -> dict:
    variants = {"TIGER": [], "SASRec": [], "RRF": []}
    variants.update({f"weight={w:g} floor={f:g}": [] for w, f in itertools.product(WEIGHTS, FLOORS)})
    for _, lsm, items, scores in models.chunks(models.split.valid_history, models.valid, True):
        variants["TIGER"].append(items[:, :10].numpy())
        variants["SASRec"].append(lsm.topk(10, 1).indices.numpy())
        sasrec_rank = lsm.argsort(1, descending=True).argsort(1).float()
        in_beam = (items >= 0) & torch.isfinite(scores)
        rrf = (1 / (60 + sasrec_rank)).scatter_add(
            1, items.clamp(min=0), torch.where(in_beam, 1 / (60 + torch.arange(models.beam)), 0.0)
        )
        variants["RRF"].append(rrf.topk(10, 1).indices.numpy())
        for w, f in itertools.product(WEIGHTS, FLOORS):
            variants[f"weight={w:g} floor={f:g}"].append(fuse(lsm, items, scores, w, f).topk(10, 1).indices.numpy())
    targets = models.split.valid_target
    results = {name: ranking_metrics(np.concatenate(parts), targets) for name, parts in variants.items()}
    best = max((n for n in results if n.startswith("weight")), key=lambda n: results[n]["ndcg@10"])
    for name in ("TIGER", "SASRec", "RRF", best):
        print(name, {k: round(v, 4) for k, v in results[name].items()})
    return {"split": "valid", "protocol": "history_excluded", "best": best, "results": results}


def test_once(models: Models, weight: float, floor: float) -> dict:
    targets = models.split.test_target
    tiger_ranks = load_target_ranks(models.run_dir / TARGET_RANKS_FILE)
    sasrec_ranks = load_target_ranks(models.baselines_dir / "baselines" / TARGET_RANKS_FILE)
    if tiger_ranks is None or sasrec_ranks is None:
        raise SystemExit("the run and the baselines must keep their test target ranks")
    out = {"split": "test", "weight": weight, "floor": floor, "fused": {}, "paired_ci95": {}}
    for protocol, exclude in (("history_excluded", True), ("history_ranked", False)):
        ranked = np.concatenate(
            [
                fuse(lsm, items, scores, weight, floor).topk(10, 1).indices.numpy()
                for _, lsm, items, scores in models.chunks(models.split.test_history, models.test, exclude)
            ]
        )
        ranks = target_ranks(ranked, targets)
        out["fused"][protocol] = mean_metrics(ranks)
        others = {"SASRec": sasrec_ranks[f"SASRec/{protocol}"], "TIGER": tiger_ranks[protocol]}
        out.setdefault("alone", {})[protocol] = {name: mean_metrics(r) for name, r in others.items()}
        out["paired_ci95"][protocol] = {
            f"fused_minus_{name}": {m: paired_bootstrap_ci(ranks, r, m) for m in ("recall@10", "ndcg@10")}
            for name, r in others.items()
        }
    config = {**models.cfg.to_dict(), "fusion": {"weight": weight, "floor": floor, "beam": models.beam}}
    record_test(models.dataset.name, config, "TIGER + SASRec fused", out["fused"])
    for protocol, metrics in out["fused"].items():
        print(protocol, {m: round(metrics[m], 4) for m in METRICS}, out["paired_ci95"][protocol])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished TIGER run")
    parser.add_argument("baselines_dir", type=Path, help="the --out of `tigerrec experiment baselines` (sasrec)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--test", nargs=2, type=float, metavar=("WEIGHT", "FLOOR"), help="score the test split once")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a result file is never reused for another run")
    models = Models(args.run_dir, args.baselines_dir, args.beam)
    result = validation_grid(models) if args.test is None else test_once(models, *args.test)
    write_json(
        args.out,
        {
            "dataset": models.dataset.name,
            "users": len(models.split.train),
            "tiger_run": str(args.run_dir),
            "sasrec": str(args.baselines_dir / "baselines" / "sasrec.safetensors"),
            "beam": args.beam,
            **result,
            **provenance(),
        },
    )


if __name__ == "__main__":
    main()
