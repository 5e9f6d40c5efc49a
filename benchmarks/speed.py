"""Training and decoding speed of the sequence model on a real dataset, as ratios in one run.

Training: samples/s of the shipped path (length-bucketed batches, bf16 autocast where
supported) against the same model in plain fp32 with every batch padded to 20 items.
Decoding: seconds to evaluate every user (constrained beam search, top-10) at beam 10 and 20.
Ceiling: the model FLOPs of one training sample (forward + backward, counted by
torch.utils.flop_counter on real batches) against the bf16 matmul throughput of this
machine, for a large square matmul and for the model's own shapes (d_model 128).

    python benchmarks/speed.py --data-dir ../shared/data/beauty --ids-dir runs/beauty/ids \
        --out benchmarks/results/2026-11-29-speed/speed.json [--set model.history=pooled ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tigerrec.config import RunConfig
from tigerrec.data import load_dataset
from tigerrec.device import autocast, bf16_supported, provenance
from tigerrec.evaluate import evaluate
from tigerrec.pipeline import prepare
from tigerrec.semantic_ids import SemanticIDs
from tigerrec.sequences import PAD, length_bucketed_batches
from tigerrec.train import make_optimizer


def batch_tensors(data, cfg, index, bucketed: bool):
    """The shipped training batch; for the naive baseline, padded to the full 20-item window."""
    tokens, decoder_tokens, targets = data.batch(index)
    if not bucketed:  # pad axis 1: code tokens (B, T), or item rows of a pooled history (B, T, id_length)
        per_item = 1 if tokens.dim() == 3 else data.tokenizer.id_length
        full = int(cfg.model.use_user_token) + per_item * cfg.data.max_history
        tokens = F.pad(tokens, (0, 0) * (tokens.dim() - 2) + (0, full - tokens.shape[1]), value=PAD)
    return tokens, decoder_tokens, targets


def training_step(model, optimizer, tensors, bf16: bool) -> None:
    tokens, decoder_tokens, targets = tensors
    with autocast("cpu", bf16):
        logits = model(tokens, decoder_tokens)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_speed(model, data, cfg, steps: int, bucketed: bool, bf16: bool) -> float:
    """Samples/s over ``steps`` optimiser steps (after 3 warm-up steps)."""
    optimizer = make_optimizer(model, cfg.train)
    batches = length_bucketed_batches(data.train.lengths, cfg.train.batch_size, seed=0, epoch=0)
    model.train()
    start, samples = None, 0
    for i, index in enumerate(batches[: steps + 3]):
        if i == 3:
            start, samples = time.perf_counter(), 0
        training_step(model, optimizer, batch_tensors(data, cfg, index, bucketed), bf16)
        samples += len(index)
    return samples / (time.perf_counter() - start)


def train_flops_per_sample(model, data, cfg, batches: int) -> float:
    """Model FLOPs (matmuls, forward + backward) per training example, on shipped (bucketed) batches."""
    indices = length_bucketed_batches(data.train.lengths, cfg.train.batch_size, seed=1, epoch=0)[:batches]
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        for index in indices:
            tokens, decoder_tokens, targets = batch_tensors(data, cfg, index, bucketed=True)
            F.cross_entropy(model(tokens, decoder_tokens).flatten(0, 1), targets.flatten()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / sum(len(index) for index in indices)


def matmul_tflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Sustained TFLOP/s of an (m, k) @ (k, n) matmul."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * m * k * n * calls / (time.perf_counter() - start) / 1e12


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ids-dir", required=True, help="directory with semantic_ids.csv (from `tigerrec ids`)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-users", type=int, default=0, help="0 = all users")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override (repeatable), e.g. model.history=pooled",
    )
    parser.add_argument("--out")
    args = parser.parse_args()

    cfg = RunConfig().override(args.set).validate()
    dataset = load_dataset(args.data_dir)
    ids = SemanticIDs.load(args.ids_dir, cfg.ids.codebook_size)
    data, test, model = prepare(dataset, ids, cfg)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    bf16 = bf16_supported("cpu")

    result = {"dataset": dataset.name, "overrides": args.set, "parameters": model.num_parameters(), "bf16": bf16}
    result["train_samples_per_s"] = round(train_speed(model, data, cfg, args.steps, bucketed=True, bf16=bf16), 1)
    model.load_state_dict(initial)
    result["train_samples_per_s_naive_fp32"] = round(
        train_speed(model, data, cfg, args.steps, bucketed=False, bf16=False), 1
    )
    result["train_speedup"] = round(result["train_samples_per_s"] / result["train_samples_per_s_naive_fp32"], 2)

    # How far the shipped path is from what the hardware allows.
    model.load_state_dict(initial)
    flops = train_flops_per_sample(model, data, cfg, batches=20)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak_square = matmul_tflops(4096, 4096, 4096, dtype)
    peak_model_shape = matmul_tflops(256 * 40, cfg.model.d_model, cfg.model.d_ff, dtype)  # a batch of ~40-token inputs
    result["train_gflops_per_sample"] = round(flops / 1e9, 3)
    result["train_tflops_achieved"] = round(flops * result["train_samples_per_s"] / 1e12, 3)
    result["matmul_tflops_4096_square"] = round(peak_square, 3)
    result["matmul_tflops_model_shape"] = round(peak_model_shape, 3)
    result["train_samples_per_s_ceiling"] = round(peak_model_shape * 1e12 / flops, 1)
    result["train_tflops_needed_for_2000"] = round(flops * 2000 / 1e12, 3)

    examples = test if not args.eval_users else test.subset(np.arange(args.eval_users))
    for beam in (10, 20):
        metrics = evaluate(
            model,
            data.tokenizer,
            data.trie,
            examples,
            data.user_tokens[examples.users],
            beam_size=beam,
            top_k=10,
            batch_size=cfg.eval.batch_size,
            bf16=bf16,
        )
        result[f"eval_all_users_seconds_beam{beam}"] = metrics["seconds"]
        result[f"eval_users_per_s_beam{beam}"] = round(len(examples) / metrics["seconds"], 1)
    result["eval_users"] = len(examples)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result.update(provenance())
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
