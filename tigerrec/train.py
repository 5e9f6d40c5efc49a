"""Training the sequence model: bucketed batches, bf16 autocast, validation, exact resume, DDP.

Under ``torchrun --nproc_per_node N`` each process takes every N-th batch of the
same epoch order (per-process batch = batch_size / N, so the global batch stays
``batch_size``), gradients are averaged by DistributedDataParallel (gloo on CPU,
nccl on GPU), and process 0 validates and writes files.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import SCHEDULES, EvalConfig, RunConfig, TrainConfig, show_value
from .decoding import PrefixTrie
from .device import autocast, use_bf16
from .errors import TigerrecError, brief
from .evaluate import evaluate, evaluate_protocols
from .io import atomic_path, write_text
from .ledger import record_test
from .model import SequenceModel
from .rundir import BEST_MODEL, CHECKPOINT, TRAIN_LOG, VALID_LOG
from .sequences import Examples, Tokenizer, length_bucketed_batches

log = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


@dataclass
class TrainData:
    tokenizer: Tokenizer
    trie: PrefixTrie | None  # TIGER's decoding constraint; None for RPG, which scores every item
    train: Examples
    valid: Examples
    user_tokens: np.ndarray  # (num_users,) encoder token of each user
    anonymous_share: float = 0.0  # ModelConfig.anonymous_share
    # With data.backtest: the targets one step after ``valid`` (the real validation items), decoded at
    # every validation for the curve ("forward_" columns of valid_log.csv), never used to select.
    forward: Examples | None = None

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder tokens, teacher-forced decoder tokens and target codes of training examples ``index``.

        With a causal history every history position has a target (the next item): one decoder
        row per position, padded rows with target codes -100 (ignored by the loss)."""
        examples = self.train.subset(index)
        users = torch.from_numpy(self.user_tokens[examples.users])
        if self.anonymous_share > 0:  # torch's generator: part of the checkpoint, so resume stays exact
            users = users.masked_fill(torch.rand(len(users)) < self.anonymous_share, self.tokenizer.anonymous_user)
        tokens = self.tokenizer.encoder_input(torch.from_numpy(examples.histories), users)
        if not self.tokenizer.causal:
            targets = self.tokenizer.item_codes[torch.from_numpy(examples.targets)]
            return tokens, self.tokenizer.decoder_input(targets), targets
        following = torch.from_numpy(examples.next_items()[:, : examples.lengths.max()]).flatten()
        targets = self.tokenizer.item_codes[following.clamp(min=0)]
        decoder_tokens = self.tokenizer.decoder_input(targets)
        return tokens, decoder_tokens, targets.masked_fill((following < 0)[:, None], -100)


def validation_examples(valid: Examples, cfg: TrainConfig) -> Examples:
    """The examples validated during training: all, or ``cfg.valid_users`` of them fixed by the seed."""
    if cfg.valid_users and cfg.valid_users < len(valid):
        return valid.subset(np.random.default_rng(cfg.seed).choice(len(valid), cfg.valid_users, replace=False))
    return valid


# ------------------------------------------------------------------ distributed


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def training_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return "cpu"


# ------------------------------------------------------------------ logs


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def truncate_csv(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and float(r[0]) <= last_step]
    write_text(path, "".join(",".join(r) + "\r\n" for r in kept))


# ------------------------------------------------------------------ training


def budget_spent(step: int, cfg: TrainConfig, elapsed_minutes: float = 0.0) -> float:
    """The share of the training budget spent, 0 to 1: steps (a cap on passes already counted in them)
    or, under ``max_minutes``, wall-clock time, whichever is further along. It sets the schedule's
    decay and the progress bar, and training ends when it reaches 1."""
    spent = step / cfg.steps
    if cfg.max_minutes:
        spent = max(spent, elapsed_minutes / cfg.max_minutes)
    return min(1.0, spent)


def out_of_patience(evals_since_best: int, patience: int) -> bool:
    """Validation has not improved for ``patience`` evaluations in a row (0: never stop early).
    TIGER's and RPG's training and the SASRec baseline's stop on it."""
    return bool(patience) and evals_since_best >= patience


def lr_factor(step: int, cfg: TrainConfig, elapsed_minutes: float = 0.0) -> float:
    """The learning rate at ``step`` as a share of ``cfg.lr``.

    "rsqrt" is T5X's schedule (constant for ``warmup_steps``, then 1/sqrt(step)); "constant"
    warms up linearly over ``warmup_steps`` and then stays constant. An optional cooldown decays
    either linearly to 0 over the last ``cooldown_fraction`` of the budget, measured in steps or,
    under ``max_minutes``, in wall-clock time, whichever is further along, so a run stopped by the
    clock still ends annealed.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.schedule == "rsqrt":
        factor = min(1.0, math.sqrt(cfg.warmup_steps / max(step, 1)))
    else:
        factor = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.cooldown_fraction > 0:
        progress = budget_spent(step, cfg, elapsed_minutes)
        factor *= min(1.0, max(0.0, (1.0 - progress) / cfg.cooldown_fraction))
    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        # Weight decay on matrices only (embeddings and weights), not on norm gains.
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adafactor or adamw")


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train(model: SequenceModel, data: TrainData, cfg: TrainConfig, eval_cfg: EvalConfig, run_dir: str | Path) -> dict:
    """Train for ``cfg.steps`` steps (resuming from ``run_dir/checkpoint.pt`` if present; that it was
    trained from the same inputs is the caller's to check, see ``rundir.check_run_dir``).

    Returns a summary: steps done, best validation metrics and step, timings.
    The best model by validation NDCG@10 is at ``run_dir/model.safetensors``.
    """
    return Training(model, data, cfg, eval_cfg, run_dir).run()


class Training:
    """One call of ``train``: what it starts from (a fresh model, or the checkpoint it resumes), then its
    loop of steps, each an update, a log row, a validation when due and a checkpoint when due."""

    def __init__(self, model: SequenceModel, data: TrainData, cfg: TrainConfig, eval_cfg: EvalConfig, run_dir):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = distributed_context()
        self.device = training_device()
        self.model, self.data, self.eval_cfg = model.to(self.device), data, eval_cfg
        self.bf16 = use_bf16(self.device, cfg.bf16)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must divide among {self.world} processes")
        self.local_batch = cfg.batch_size // self.world
        torch.manual_seed(cfg.seed)
        self.optimizer = make_optimizer(model, cfg)
        self.state = self._resume()
        self.net = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        self.valid = validation_examples(data.valid, cfg)
        self.forward = validation_examples(data.forward, cfg) if data.forward is not None else None  # same users
        self.batches_per_epoch = len(length_bucketed_batches(data.train.lengths, self.local_batch, cfg.seed, 0))
        self.batches_per_epoch //= self.world
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(data.train)} training examples are fewer than one batch per process")
        self.uncapped_steps = cfg.steps
        if cfg.epochs:  # a cap in passes: the budget in steps (for the schedule and the stop) is whichever ends first
            cfg = replace(cfg, steps=min(cfg.steps, math.ceil(cfg.epochs * self.batches_per_epoch)))
        self.cfg = cfg
        self.stopped_by = "steps"
        self.state_seconds_at_start, self.samples_at_start = self.state["seconds"], self.state["samples"]
        self.start_step = self.step = self.state["step"]
        self.started = time.perf_counter() - self.state["seconds"]
        self.next_eval_minutes = _next_multiple(self.state["seconds"] / 60, cfg.eval_every_minutes)
        self.window_loss, self.window_samples, self.window_start = 0.0, 0, time.perf_counter()
        # The bar counts the share of the budget spent, by steps or minutes, whichever ends training first
        # (counting to the paper's steps under a time limit would show an ETA of days). The step count is
        # in the postfix.
        self.progress = tqdm(
            total=100,
            initial=100 * budget_spent(self.step, cfg, self.state["seconds"] / 60),
            desc="train",
            disable=self.rank != 0,
            mininterval=2,
            bar_format="{l_bar}{bar}| {n:.1f}% of the budget [{elapsed}<{remaining}{postfix}]",
        )

    def _resume(self) -> dict:
        """The training state: a fresh one, or the checkpoint's (model, optimizer and generators restored)."""
        state = {"step": 0, "samples": 0, "best": -1.0, "best_step": 0, "evals_since_best": 0, "seconds": 0.0}
        checkpoint_path = self.run_dir / CHECKPOINT
        if checkpoint_path.exists():
            state = _load_checkpoint(checkpoint_path, self.model, self.optimizer, self.device)
            log.info("resuming from %s at step %d", checkpoint_path, state["step"])
        if self.rank == 0:  # rows after the checkpoint (all of them, without one) are from a run that did not save
            truncate_csv(self.run_dir / TRAIN_LOG, state["step"])
            truncate_csv(self.run_dir / VALID_LOG, state["step"])
        return state

    def run(self) -> dict:
        cfg = self.cfg
        # A run resumed after its budget is spent (a finished run started again) trains no further step.
        stop = budget_spent(self.step, cfg, self.state["seconds"] / 60) >= 1.0 or out_of_patience(
            self.state["evals_since_best"], cfg.patience
        )
        while not stop:
            epoch, position = divmod(self.step, self.batches_per_epoch)
            batches = length_bucketed_batches(self.data.train.lengths, self.local_batch, cfg.seed, epoch)
            for index in batches[self.rank :: self.world][: self.batches_per_epoch][position:]:
                lr, minutes = self._update(index)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(lr)
                spent = budget_spent(self.step, cfg, minutes)
                self.progress.update(100 * spent - self.progress.n)
                last = spent >= 1.0
                if last:
                    self._record_stop(minutes)
                if self._validation_due(minutes) or last:
                    self._validate(minutes)
                    if not last and self._out_of_patience():
                        last, self.stopped_by = True, "patience"
                if self.step % cfg.checkpoint_every == 0 or last:
                    self._checkpoint()
                if last:
                    stop = True
                    break
        self.progress.close()
        return self._summary()

    def _record_stop(self, minutes: float) -> None:
        """Why the budget ended: the step or pass cap (the same model on every machine), or the clock."""
        cfg = self.cfg
        if cfg.max_minutes and minutes / cfg.max_minutes >= self.step / cfg.steps:
            self.stopped_by = "max_minutes"
            log.warning(
                "training stopped by its %s-minute cap (train.max_minutes) at step %d of %d: this model differs "
                "from what the same settings train on a faster machine",
                show_value(cfg.max_minutes),
                self.step,
                cfg.steps,
            )
        else:
            self.stopped_by = "passes" if cfg.epochs and self.step < self.uncapped_steps else "steps"

    def _forecast(self) -> None:
        """Log, once early on, how long the remaining steps will take at the rate measured so far."""
        elapsed = time.perf_counter() - self.started - self.state_seconds_at_start
        steps_done = self.step - self.start_step
        remaining = self.cfg.steps - self.step
        minutes = remaining * elapsed / steps_done / 60
        rate = (self.state["samples"] - self.samples_at_start) / elapsed
        log.info(
            "forecast on this machine: %.0f samples/s, so the remaining %d steps take about %s%s",
            rate,
            remaining,
            f"{minutes:.0f} minutes" if minutes >= 1 else f"{minutes * 60:.0f} s",
            f" (train.max_minutes={show_value(self.cfg.max_minutes)} will stop it earlier)"
            if self.cfg.max_minutes and self.cfg.max_minutes < minutes + self.state_seconds_at_start / 60
            else "",
        )

    def _update(self, index: np.ndarray) -> tuple[float, float]:
        """One optimizer step on the training examples ``index``; returns its lr and the minutes so far."""
        cfg, device = self.cfg, self.device
        self.model.train()
        tokens, decoder_tokens, targets = self.data.batch(index)
        with autocast(device, self.bf16):
            logits = self.net(tokens.to(device), decoder_tokens.to(device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=-100)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optimizer == "adamw":
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        # Under DDP every process takes process 0's clock, so all use the same lr and stop together.
        timed = cfg.max_minutes or cfg.eval_every_minutes
        minutes = from_rank0((time.perf_counter() - self.started) / 60, self.world, device) if timed else 0.0
        lr = cfg.lr * lr_factor(self.step + 1, cfg, minutes)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.step += 1
        self.window_loss += loss.item()
        # A sample is one training target (an item to predict): one per example, or one
        # per history position with a causal history.
        samples = int((targets[:, 0] >= 0).sum()) * self.world
        self.window_samples += samples
        self.state["samples"] += samples
        return lr, minutes

    def _log(self, lr: float) -> None:
        """A train_log.csv row: the mean loss and the samples per second since the last row."""
        cfg, step = self.cfg, self.step
        row = {
            "step": step,
            "samples": self.state["samples"],
            "epoch": round(step / self.batches_per_epoch, 3),
            "loss": round(self.window_loss / max(1, step % cfg.log_every or cfg.log_every), 5),
            "lr": lr,
            "samples_per_s": round(self.window_samples / (time.perf_counter() - self.window_start), 1),
        }
        self.progress.set_postfix(
            {
                "step": f"{step}/{cfg.steps}",
                "loss": row["loss"],
                "lr": f"{row['lr']:.2g}",
                "sps": f"{row['samples_per_s']:.0f}",
            }
        )
        if self.rank == 0:
            append_csv(self.run_dir / TRAIN_LOG, row)
            if step - self.start_step == cfg.log_every:  # the first row of this call
                self._forecast()
        self.window_loss, self.window_samples, self.window_start = 0.0, 0, time.perf_counter()

    def _validation_due(self, minutes: float) -> bool:
        if self.cfg.eval_every:
            return self.step % self.cfg.eval_every == 0
        return bool(self.cfg.eval_every_minutes) and minutes >= self.next_eval_minutes  # by the clock, or at the end

    def _validate(self, minutes: float) -> None:
        """Validate (process 0), log the metrics, keep the model when it is the best so far."""
        cfg, state, data, step = self.cfg, self.state, self.data, self.step
        if cfg.eval_every_minutes:
            self.next_eval_minutes = _next_multiple(minutes, cfg.eval_every_minutes)
        if self.rank == 0:
            metrics = evaluate_data(self.model, data, self.valid, self.eval_cfg, self.bf16, "valid")
            minutes_so_far = round((time.perf_counter() - self.started) / 60, 2)
            row = {"step": step, "samples": state["samples"], "minutes": minutes_so_far, **metrics}
            if self.forward is not None:
                forward = evaluate_data(self.model, data, self.forward, self.eval_cfg, self.bf16, "forward")
                row |= {"forward_" + k: v for k, v in forward.items()}
            append_csv(self.run_dir / VALID_LOG, row)
            log.info("step %d valid %s", step, metrics)
            if metrics[SELECTION_METRIC] > state["best"]:
                state.update(best=metrics[SELECTION_METRIC], best_step=step, evals_since_best=0)
                self.model.save(self.run_dir / BEST_MODEL)
            else:
                state["evals_since_best"] += 1

    def _out_of_patience(self) -> bool:
        """Process 0 validated: its count of validations without a new best decides for every process."""
        return _agree(out_of_patience(self.state["evals_since_best"], self.cfg.patience), self.world, self.device)

    def _checkpoint(self) -> None:
        self.state.update(step=self.step, seconds=time.perf_counter() - self.started)
        if self.rank == 0:
            _save_checkpoint(self.run_dir / CHECKPOINT, self.model, self.optimizer, self.state, self.device)
        if self.world > 1:
            dist.barrier()

    def _summary(self) -> dict:
        return {
            "steps": self.step,
            "steps_this_run": self.step - self.start_step,
            "samples": self.state["samples"],
            "best_step": self.state["best_step"],
            "best_valid_" + SELECTION_METRIC: self.state["best"],
            "train_seconds": round(time.perf_counter() - self.started, 1),
            "samples_per_s": round(self.state["samples"] / max(time.perf_counter() - self.started, 1e-9), 1),
            "stopped_by": self.stopped_by,
            "bf16": self.bf16,
            "world_size": self.world,
            "parameters": self.model.num_parameters(),
        }


def evaluate_data(
    model: SequenceModel,
    data: TrainData,
    examples: Examples,
    eval_cfg: EvalConfig,
    bf16: bool,
    desc: str,
    counts: np.ndarray | None = None,
    fusion=None,
) -> dict:
    """Metrics of ``examples`` of ``data``, each user with its own token, decoded as ``eval_cfg`` says
    (and re-ranked by ``fusion``, a ``fusion.Fusion``, when given)."""
    return evaluate(
        model,
        data.tokenizer,
        data.trie,
        examples,
        data.user_tokens[examples.users],
        eval_cfg.beam_size,
        eval_cfg.top_k,
        eval_cfg.batch_size,
        bf16,
        desc=desc,
        exclude_history=eval_cfg.exclude_history,
        counts=counts,
        fusion=fusion,
    )


def evaluate_splits(
    model: SequenceModel,
    data: TrainData,
    test: Examples,
    cfg: RunConfig,
    counts: np.ndarray | None = None,
    dataset_name: str = "",
    fusion=None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics of every validation and test example, decoded as ``cfg.eval`` says (per popularity group
    of the targets too, given the training ``counts`` of every item: ``evaluate.item_counts``).

    The test is scored under both protocols (``evaluate.evaluate_protocols``), and recorded in the
    test ledger unless it is a backtest's; also returns its target ranks per protocol. ``fusion`` (a
    ``fusion.Fusion``) re-ranks both splits, and the generative model's own metrics come alongside. With
    ``eval.users``, both splits are the same fixed random sample of that many users."""
    valid = data.valid
    if cfg.eval.users and cfg.eval.users < len(test):
        sample = np.sort(np.random.default_rng(cfg.train.seed).choice(len(test), cfg.eval.users, replace=False))
        valid, test = valid.subset(sample), test.subset(sample)
    evals = {"valid": evaluate_examples(model, data, valid, cfg, "valid", counts, fusion)}
    bf16 = _decoding(model, cfg)
    evals["test"], evals["test_protocols"], ranks = evaluate_protocols(
        model,
        data.tokenizer,
        data.trie,
        test,
        data.user_tokens[test.users],
        cfg.eval.beam_size,
        cfg.eval.top_k,
        cfg.eval.batch_size,
        bf16,
        cfg.eval.exclude_history,
        counts,
        fusion=fusion,
    )
    if not cfg.data.backtest:
        members = f" x{cfg.train.members}" if cfg.train.members > 1 else ""
        fused = f" + {cfg.fusion.item_model} fused" if fusion is not None else ""
        record_test(dataset_name, cfg.to_dict(), f"{cfg.model.kind}{members}{fused}", evals["test_protocols"])
    for name in ("valid", "test"):
        log.info("%s: %s", name, evals[name])
    return evals, ranks


def evaluate_examples(
    model: SequenceModel,
    data: TrainData,
    examples: Examples,
    cfg: RunConfig,
    desc: str,
    counts: np.ndarray | None = None,
    fusion=None,
) -> dict:
    """Metrics of ``examples``, decoded as ``cfg.eval`` says (re-ranked by ``fusion`` when given)."""
    return evaluate_data(model, data, examples, cfg.eval, _decoding(model, cfg), desc, counts, fusion)


def _decoding(model: SequenceModel, cfg: RunConfig) -> bool:
    """Set the model to decode as ``cfg.eval`` says; returns whether it decodes in bf16."""
    model.configure_decoding(cfg.eval)
    return use_bf16(str(next(model.parameters()).device), cfg.train.bf16)


def _next_multiple(value: float, every: float) -> float:
    """The first multiple of ``every`` above ``value`` (0 when ``every`` is 0)."""
    return (math.floor(value / every) + 1) * every if every else 0.0


def from_rank0(value: float, world: int, device: str) -> float:
    """Process 0's ``value`` on every process."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def _agree(flag: bool, world: int, device: str) -> bool:
    """Process 0 decides (it validated); everyone follows."""
    return bool(from_rank0(1.0 if flag else 0.0, world, device))


def _save_checkpoint(path: Path, model, optimizer, state: dict, device: str) -> None:
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "state": dict(state),
    }
    if device.startswith("cuda"):  # dropout on a GPU draws from the device's own generator
        checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def _load_checkpoint(path: Path, model, optimizer, device: str) -> dict:
    """Restore the model, optimizer and random number generators from ``path``;
    returns the training state."""
    remedy = "delete it to train from the start"
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise TigerrecError(f"{path} is corrupt or not a tigerrec checkpoint ({type(e).__name__}); {remedy}") from None
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        # Generator states are CPU byte tensors wherever map_location put the rest.
        torch.set_rng_state(checkpoint["rng"].cpu())
        if "cuda_rng" in checkpoint and device.startswith("cuda"):
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        return {"samples": 0, **checkpoint["state"]}
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise TigerrecError(f"{path} does not fit this model and optimizer ({brief(e)}); {remedy}") from None
