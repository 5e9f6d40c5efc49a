"""Semantic-ID quality and cost on Amazon Beauty: embed items, fit a quantiser, add collision codes.

    python benchmarks/ids_beauty.py --scheme rqvae [--epochs N] [--no-cache] [--threads 1]

Writes benchmarks/results/ids_beauty.json (rqvae) or ids_beauty_<scheme>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path

import torch

from tigerrec.config import IDsConfig, TextConfig
from tigerrec.data import load_dataset
from tigerrec.quantize import make_quantizer
from tigerrec.semantic_ids import SemanticIDs
from tigerrec.text import TextEncoder, item_sentence

# First (uncached) run of all-mpnet-base-v2 over the 12101 Beauty items on the 2-core dev machine.
FIRST_RUN_EMBED_SECONDS = 173.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/beauty")
    parser.add_argument("--scheme", default="rqvae", choices=["rqvae", "rqkmeans", "lsh", "random"])
    parser.add_argument("--epochs", type=int, default=IDsConfig().epochs)
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="re-embed instead of reading the embedding cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = load_dataset(args.data)
    texts = [item_sentence(meta, TextConfig().template) for meta in dataset.item_meta]
    encoder = TextEncoder(args.encoder)
    start = time.perf_counter()
    embeddings = encoder.encode(texts, use_cache=not args.no_cache)
    embed_seconds = time.perf_counter() - start

    config = IDsConfig(scheme=args.scheme, epochs=args.epochs)
    quantizer = make_quantizer(args.scheme, embeddings.shape[1], config)
    start = time.perf_counter()
    quantizer.fit(embeddings)
    fit_seconds = time.perf_counter() - start
    ids = SemanticIDs.from_codes(dataset.item_ids, quantizer.encode(embeddings), config.codebook_size)
    metrics = ids.metrics()

    result = {
        "scheme": args.scheme,
        "items": metrics["items"],
        "utilization": metrics["utilization"],
        "unique_prefix_share": metrics["unique_prefix_share"],
        "max_collision_group": metrics["max_collision_group"],
        "collision_group_sizes": metrics["collision_group_sizes"],
        "unique_ids": metrics["unique_ids"],
        "reconstruction": quantizer.history[-1].get("reconstruction"),
        "encoder": encoder.label,
        "embed_seconds": round(embed_seconds, 1),
        "embed_cache_used": not args.no_cache,  # cached embeddings load in seconds
        "embed_seconds_first_run": FIRST_RUN_EMBED_SECONDS,
        "rqvae_seconds": round(fit_seconds, 1),
        "epochs": args.epochs if args.scheme == "rqvae" else None,
        "config": vars(config),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "history": quantizer.history,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
    }
    name = "ids_beauty.json" if args.scheme == "rqvae" else f"ids_beauty_{args.scheme}.json"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
