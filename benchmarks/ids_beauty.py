"""Semantic-ID quality and cost: embed a dataset's items, fit a quantiser, add collision codes.

    python benchmarks/ids_beauty.py --scheme rqvae [--epochs N] [--no-cache] [--threads T]

Runs the same stage as `tigerrec ids` (pipeline.build_semantic_ids) and writes a summary
to benchmarks/results/2026-11-28-semantic-ids/ids_beauty.json (rqvae) or ids_beauty_<scheme>.json. With
--no-cache the embeddings are computed again (into a fresh cache) so the embedding
time is measured; otherwise they come from the cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

import torch

from tigerrec.config import RunConfig
from tigerrec.data import load_dataset
from tigerrec.device import provenance
from tigerrec.io import read_json, write_json
from tigerrec.pipeline import build_semantic_ids
from tigerrec.rundir import IDS_METRICS
from tigerrec.text import cache_dir

RESULTS = Path(__file__).parent / "results" / "2026-11-28-semantic-ids"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/beauty")
    parser.add_argument("--scheme", default="rqvae", choices=["rqvae", "rqkmeans", "lsh", "random"])
    parser.add_argument("--epochs", type=int, default=RunConfig().ids.epochs)
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="embed again instead of reading the embedding cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = RunConfig().override(
        [f"ids.scheme={args.scheme}", f"ids.epochs={args.epochs}", f"text.encoder={args.encoder}"]
    )
    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as work:
        if args.no_cache:  # fresh embedding cache, but keep the unpacked models
            fresh = Path(work) / "cache"
            fresh.mkdir()
            if (cache_dir() / "models").is_dir():
                (fresh / "models").symlink_to(cache_dir() / "models")
            os.environ["TIGERREC_CACHE"] = str(fresh)
        build_semantic_ids(dataset, cfg, Path(work) / "ids")
        metrics = read_json(Path(work) / "ids" / IDS_METRICS)

    result = {
        "dataset": dataset.name,
        "scheme": args.scheme,
        "encoder": metrics["encoder"],
        "epochs": args.epochs if args.scheme == "rqvae" else None,
        **{
            k: metrics[k]
            for k in (
                "items",
                "utilization",
                "unique_prefix_share",
                "max_collision_group",
                "collision_group_sizes",
                "unique_ids",
                "reconstruction",
            )
        },
        "embed_seconds": metrics["embed_seconds"],
        "embed_cached": not args.no_cache,
        "rqvae_seconds": metrics["quantizer_seconds"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        **provenance(),
        "config": vars(cfg.ids),
        "history": metrics["history"],
    }
    out = (
        Path(args.out)
        if args.out
        else RESULTS / ("ids_beauty.json" if args.scheme == "rqvae" else f"ids_beauty_{args.scheme}.json")
    )
    write_json(out, result)
    print(
        f"{out}: utilisation {result['utilization']}, unique prefixes {result['unique_prefix_share']:.1%}, "
        f"largest collision group {result['max_collision_group']}, embed {result['embed_seconds']} s, "
        f"quantiser {result['rqvae_seconds']} s"
    )


if __name__ == "__main__":
    main()
