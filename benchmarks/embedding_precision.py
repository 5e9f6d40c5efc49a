"""Embedding precision: could a cheaper text encoder serve CPUs without native bf16?

    python benchmarks/embedding_precision.py --data ../shared/data/beauty --items 512 --ids-dir runs/beauty-ids

Embeds the same random items (the dataset's item sentences) with the encoder in fp32 (the path
of CPUs without bf16), under bf16 autocast (where the CPU has native bf16: what `tigerrec run`
uses there), with its linear layers dynamically quantised to int8 by torch
(``torch.ao.quantization.quantize_dynamic``) and, if torchao is installed, by torchao
(``Int8DynamicActivationInt8WeightConfig``). Each is compared with fp32: cosine similarity of
the embeddings, overlap of every item's 10 nearest neighbours among the sampled items and, with
--ids-dir, the Semantic IDs that run's quantiser gives them (share of items whose first code and
whose whole ID match fp32's). Writes benchmarks/results/2026-11-30-embedding-precision/embedding_precision.json.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tigerrec.config import RunConfig
from tigerrec.data import load_dataset
from tigerrec.device import autocast, bf16_supported, provenance
from tigerrec.io import write_json
from tigerrec.quantize import load_quantizer
from tigerrec.rundir import QUANTIZER_FILE
from tigerrec.text import TextEncoder, item_sentence

RESULTS = Path(__file__).parent / "results" / "2026-11-30-embedding-precision" / "embedding_precision.json"


def neighbours(embeddings: np.ndarray, k: int = 10) -> np.ndarray:
    """(N, k) each row's k most cosine-similar other rows."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1)[:, :k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/beauty")
    parser.add_argument("--items", type=int, default=512, help="random items embedded by each variant")
    parser.add_argument("--encoder", default="auto")
    parser.add_argument(
        "--ids-dir", help="a Semantic IDs directory (tigerrec ids ... --out DIR) whose quantiser codes the embeddings"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    cfg = RunConfig()
    dataset = load_dataset(args.data, cfg.data.min_interactions)
    rng = np.random.default_rng(0)
    chosen = rng.choice(dataset.num_items, min(args.items, dataset.num_items), replace=False)
    texts = [item_sentence(dataset.item_meta[i], cfg.text.template) for i in chosen]
    quantizer = load_quantizer(Path(args.ids_dir) / QUANTIZER_FILE) if args.ids_dir else None

    encoder = TextEncoder(args.encoder, cfg.text.batch_size, device="cpu")
    variants = {"fp32": (encoder.model, False)}
    if bf16_supported("cpu"):
        variants["bf16 autocast"] = (encoder.model, True)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        variants["int8, torch dynamic"] = (
            torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder.model), {torch.nn.Linear}, dtype=torch.qint8),
            False,
        )
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        variants["int8, torchao"] = (copy.deepcopy(encoder.model), False)
        quantize_(variants["int8, torchao"][0], Int8DynamicActivationInt8WeightConfig())
    except ImportError:
        pass
    order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first, as TextEncoder batches
    rows, reference = {}, {}
    for name, (model, bf16) in variants.items():
        with torch.inference_mode(), autocast("cpu", bf16):
            model.encode(texts[:16], batch_size=16)  # warm up
            start = time.perf_counter()
            out = model.encode([texts[i] for i in order], batch_size=cfg.text.batch_size, convert_to_numpy=True)
            seconds = time.perf_counter() - start
        embeddings = np.empty_like(out, dtype=np.float32)
        embeddings[order] = out
        row = {"seconds": round(seconds, 1), "texts_per_second": round(len(texts) / seconds, 1)}
        near = neighbours(embeddings)
        codes = quantizer.encode(embeddings) if quantizer else None
        if name == "fp32":
            reference = {"embeddings": embeddings, "near": near, "codes": codes}
        else:
            ref = reference["embeddings"]
            cosine = (embeddings * ref).sum(1) / (np.linalg.norm(embeddings, axis=1) * np.linalg.norm(ref, axis=1))
            row |= {
                "speedup_vs_fp32": round(rows["fp32"]["seconds"] / seconds, 2),
                "cosine_to_fp32_mean": round(float(cosine.mean()), 5),
                "cosine_to_fp32_min": round(float(cosine.min()), 5),
                "neighbours@10_shared_with_fp32": round(
                    float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(near, reference["near"])])), 4
                ),
            }
            if codes is not None:
                row |= {
                    "first_code_as_fp32": round(float((codes[:, 0] == reference["codes"][:, 0]).mean()), 4),
                    "whole_id_as_fp32": round(float((codes == reference["codes"]).all(1).mean()), 4),
                }
        rows[name] = row
        print(name, row, flush=True)

    write_json(
        args.out,
        {
            **provenance(),
            "dataset": args.data,
            "items": len(texts),
            "encoder": encoder.label,
            "ids_dir": args.ids_dir,
            "variants": rows,
        },
    )


if __name__ == "__main__":
    main()
