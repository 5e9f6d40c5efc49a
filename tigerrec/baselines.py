"""Baselines for the TIGER tables: most-popular, first-order Markov, Semantic_KNN and SASRec.

Every baseline returns rankings as (N, k) item indices, best first, so the
same ``evaluate.ranking_metrics`` scores them and TIGER. Histories are lists of
item-index arrays, oldest first (``Split.valid_history`` / ``test_history``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import SASRecConfig
from .data import Split
from .device import autocast, use_bf16
from .evaluate import (
    PROTOCOLS,
    mean_metrics,
    metrics_by_popularity,
    protocol_name,
    ranking_metrics,
    target_ranks,
)
from .new_items import history_profiles, unit_rows
from .sequences import history_pairs, length_bucketed_batches, training_windows
from .train import SELECTION_METRIC, out_of_patience

log = logging.getLogger(__name__)


def split_metrics(rank, split: Split, exclude_history: bool, counts: np.ndarray | None = None) -> tuple[dict, dict]:
    """A baseline's metrics on the validation and test parts of ``split``; ``rank(histories,
    exclude_history=...)`` gives its (N, k) rankings with or without each user's history items.

    Validation and ``test`` rank as ``exclude_history`` says; ``test_protocols`` holds the test scored
    both ways (``evaluate.PROTOCOLS``). Also returns the test ``target_ranks`` per protocol, for
    paired comparisons. Given the training ``counts`` of every item (``evaluate.item_counts``), also
    per popularity group of the targets (``by_popularity``)."""
    valid_ranked = rank(split.valid_history, exclude_history=exclude_history)
    test_ranked = {name: rank(split.test_history, exclude_history=exclude) for name, exclude in PROTOCOLS.items()}
    ranks = {name: target_ranks(ranked, split.test_target) for name, ranked in test_ranked.items()}
    protocols = {name: mean_metrics(r) for name, r in ranks.items()}
    chosen = protocol_name(exclude_history)
    metrics = {
        "valid": ranking_metrics(valid_ranked, split.valid_target),
        "test": protocols[chosen],
        "protocol": chosen,
        "test_protocols": protocols,
    }
    if counts is not None:
        metrics["by_popularity"] = {
            "valid": metrics_by_popularity(valid_ranked, split.valid_target, counts),
            "test": metrics_by_popularity(test_ranked[chosen], split.test_target, counts),
        }
    return metrics, ranks


def _top_k(scores: torch.Tensor, histories: list[np.ndarray], k: int, exclude_history: bool) -> np.ndarray:
    """Indices of the k best scores per row, optionally never an item of the row's history; -1 where
    fewer than k items are left."""
    if exclude_history:
        scores[history_pairs(histories, scores.device)] = float("-inf")
    values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
    ranked = torch.where(torch.isfinite(values), indices, -1).cpu().numpy()  # -1: no item (all left out)
    return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)


def rows_per_chunk(num_items: int, most: int = 1024) -> int:
    """Users scored at once so that their (users x items) scores stay near 2**27 values (1 GB in float64)."""
    return max(1, min(most, 2**27 // max(num_items, 1)))


def _in_chunks(histories: list[np.ndarray], rank_chunk, num_items: int) -> np.ndarray:
    """Score users a chunk at a time: a full users x items matrix would not fit for large catalogues.
    ``rank_chunk(begin, part)`` ranks the users ``begin`` to ``begin + len(part)``, whose histories are ``part``."""
    chunk = rows_per_chunk(num_items)
    return np.concatenate([rank_chunk(i, histories[i : i + chunk]) for i in range(0, len(histories), chunk)])


def most_popular(
    train_sequences: list[np.ndarray],
    num_items: int,
    histories: list[np.ndarray],
    k: int = 10,
    exclude_history: bool = False,
) -> np.ndarray:
    """Items by how often they occur in the training parts (ties: lower index first).

    Without ``exclude_history`` every user gets the same list; with it, the items
    the user already has are skipped (Amazon 5-core users rarely repeat an item).
    """
    counts = np.bincount(np.concatenate(train_sequences), minlength=num_items).astype(np.float64)
    # Tiny decreasing offsets break ties by index, so the ranking is deterministic.
    scores = torch.from_numpy(counts - np.arange(num_items) / (num_items + 1.0))
    return _in_chunks(
        histories, lambda _, part: _top_k(scores.expand(len(part), -1).clone(), part, k, exclude_history), num_items
    )


def markov(
    train_sequences: list[np.ndarray],
    num_items: int,
    histories: list[np.ndarray],
    k: int = 10,
    exclude_history: bool = False,
) -> np.ndarray:
    """First-order Markov chain: items by how often they followed the user's last item in the
    training parts; items never seen after it are ranked by popularity (the fallback)."""
    from scipy.sparse import coo_matrix

    sources = np.concatenate([seq[:-1] for seq in train_sequences])
    following = np.concatenate([seq[1:] for seq in train_sequences])
    transitions = coo_matrix((np.ones(len(sources)), (sources, following)), shape=(num_items, num_items)).tocsr()
    counts = np.bincount(np.concatenate(train_sequences), minlength=num_items).astype(np.float64)
    # Popularity scaled below 1, minus tiny index offsets: breaks count ties, then popularity ties, by index.
    fallback = torch.from_numpy(
        counts / (counts.max() + 1.0) - np.arange(num_items) / (num_items + 1.0) / (counts.max() + 1.0)
    )

    def rank(_, part):
        last = np.array([h[-1] for h in part])
        scores = torch.from_numpy(transitions[last].toarray()) + fallback
        return _top_k(scores, part, k, exclude_history)

    return _in_chunks(histories, rank, num_items)


def rank_by_profile(
    embeddings: np.ndarray,
    profiles: np.ndarray,
    histories: list[np.ndarray],
    k: int = 10,
    exclude_history: bool = True,
    among: np.ndarray | None = None,
) -> np.ndarray:
    """The ``k`` items of highest cosine similarity to each row of ``profiles`` (N, dim). Items anywhere in
    the row's history are excluded by default; ``among`` (a bool per item) restricts the ranking to the
    items it marks."""
    unit = unit_rows(embeddings)
    left_out = None if among is None else torch.from_numpy(~np.asarray(among, dtype=bool))

    def rank(begin, part):
        scores = torch.as_tensor(profiles[begin : begin + len(part)]) @ unit.T
        if left_out is not None:
            scores[:, left_out] = float("-inf")
        return _top_k(scores, part, k, exclude_history)

    return _in_chunks(histories, rank, len(unit))


def semantic_knn(
    embeddings: np.ndarray,
    histories: list[np.ndarray],
    k: int = 10,
    max_history: int = 20,
    exclude_history: bool = True,
    among: np.ndarray | None = None,
) -> np.ndarray:
    """Items nearest to the user's profile (``new_items.history_profiles``) in the content-embedding space, by
    cosine similarity (``rank_by_profile``)."""
    return rank_by_profile(
        embeddings, history_profiles(embeddings, histories, max_history), histories, k, exclude_history, among
    )


# ------------------------------------------------------------------ SASRec


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018).

    Item embeddings (shared with the output layer) plus learned absolute
    positions, pre-LayerNorm causal Transformer blocks with a ReLU feed-forward of
    width ``hidden`` as in the original. Trained with cross-entropy over the full
    catalogue at every position (the stronger modern recipe, e.g. Klenitskiy &
    Vasilev 2023) instead of the original's BCE with one sampled negative.
    Item i is token i + 1; 0 is padding (on the right, so causal attention never sees it).
    """

    def __init__(self, num_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        # The item table is also the output layer: PyTorch's N(0, 1) default would start the
        # logits with a standard deviation of ~sqrt(hidden) and saturate the softmax. Entries of
        # std hidden^-1/2 make the scaled inputs unit-variance and the first logits of order one.
        nn.init.normal_(self.items.weight, std=cfg.hidden**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.heads, cfg.hidden, cfg.dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, L, hidden) states; state t summarises tokens[:, :t+1]."""
        length = tokens.shape[1]
        x = self.items(tokens) * self.cfg.hidden**0.5 + self.positions(torch.arange(length, device=tokens.device))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.norm(self.blocks(self.dropout(x), mask=causal, is_causal=True))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.items.weight[1:].T  # scores of every item (padding row left out)


def _pad(sequences: list[np.ndarray], length: int) -> torch.Tensor:
    """Right-padded tokens (item + 1) of the last ``length`` items of each sequence."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        recent = seq[-length:]
        out[i, : len(recent)] = recent + 1
    return torch.from_numpy(out)


@torch.no_grad()
def sasrec_scores(model: SASRec, histories: list[np.ndarray], bf16: bool = False) -> torch.Tensor:
    """(N, items) float32 scores of every item after each history, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    # Padded to the longest history read, not to max_len: padding lies after each history's last item,
    # where the causal mask hides it, so the states read are the same and short histories cost less.
    last = [min(len(h), model.cfg.max_len) - 1 for h in histories]
    tokens = _pad(histories, max(last, default=0) + 1).to(device)
    last = torch.tensor(last, device=device)
    with autocast(str(device), bf16):
        states = model(tokens)[torch.arange(len(histories), device=device), last]
        return model.logits(states).float()


def sasrec_recommend(
    model: SASRec,
    histories: list[np.ndarray],
    k: int = 10,
    batch_size: int = 1024,
    bf16: bool = False,
    exclude_history: bool = False,
) -> np.ndarray:
    """Top-k items after each history; ``exclude_history`` as TIGER's ``eval.exclude_history``."""
    batch_size = rows_per_chunk(model.items.num_embeddings, batch_size)
    ranked = [
        _top_k(sasrec_scores(model, part, bf16), part, k, exclude_history)
        for part in (histories[begin : begin + batch_size] for begin in range(0, len(histories), batch_size))
    ]
    return np.concatenate(ranked)


def sampled_softmax_loss(
    model: SASRec, states: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each target against ``negatives`` (B, M) items drawn for its sequence.

    ``states`` (B, L, hidden) and ``targets`` (B, L, item index, -1 = padding). Each position scores
    its own target and its sequence's M negatives; a negative that is the position's target (an
    accidental hit) is left out, so the loss never pushes an item against itself."""
    table = model.items.weight
    positive = (states * table[targets.clamp(min=0) + 1]).sum(-1, keepdim=True)  # (B, L, 1)
    negative = torch.einsum("bld,bmd->blm", states, table[negatives + 1])  # (B, L, M)
    negative = negative.masked_fill(negatives[:, None, :] == targets[..., None], float("-inf"))
    logits = torch.cat([positive, negative], dim=-1).float()
    real = targets >= 0
    zeros = torch.zeros(int(real.sum()), dtype=torch.long, device=logits.device)  # the target is column 0
    return F.cross_entropy(logits[real], zeros)


def full_softmax_loss(model: SASRec, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target against the whole catalogue."""
    real = targets >= 0
    return F.cross_entropy(model.logits(states[real]).float(), targets[real])


def train_sasrec(
    train_sequences: list[np.ndarray],
    num_items: int,
    valid_histories: list[np.ndarray],
    valid_targets: np.ndarray,
    cfg: SASRecConfig,
    device: str = "cpu",
    exclude_history: bool = True,
) -> tuple[SASRec, dict]:
    """Train on every prefix of the training parts, validate after every epoch and keep the weights
    with the best validation ``SELECTION_METRIC`` (the one TIGER's checkpoints are picked by too).

    Validation ranks as the test will (``exclude_history``). Stops after ``cfg.epochs``, after
    ``cfg.patience`` epochs without a new best, or after ``cfg.max_minutes`` when that is set,
    whichever comes first; ``summary["stopped_by"]`` says which. The summary's ``history`` is the
    validation curve (epoch, minutes, samples = training targets seen)."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = SASRec(num_items, cfg).to(device)
    bf16 = use_bf16(device, cfg.bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    windows = training_windows(train_sequences, cfg.max_len)
    tokens = _pad(windows, cfg.max_len + 1)  # inputs are [:, :-1], targets [:, 1:]
    lengths = np.array([len(w) - 1 for w in windows])
    best, best_state, best_epoch, since_best = -1.0, None, 0, 0
    step, samples, start, stopped_by = 0, 0, time.perf_counter(), "epochs"
    history = []
    progress = tqdm(range(cfg.epochs), desc="SASRec", unit="epoch", disable=None)
    for epoch in progress:
        model.train()
        for index in length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch):
            batch = tokens[index, : lengths[index].max() + 1].to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:] - 1  # target -1 = padding
            with autocast(device, bf16):
                states = model(inputs)
                if cfg.negatives:
                    drawn = torch.randint(0, num_items, (len(index), cfg.negatives), generator=generator)
                    loss = sampled_softmax_loss(model, states, targets, drawn.to(device))
                else:
                    loss = full_softmax_loss(model, states, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            samples += int(lengths[index].sum())
            if cfg.max_minutes and time.perf_counter() - start >= 60 * cfg.max_minutes:
                break  # a cap binds within an epoch too (large catalogues): validate and stop
        minutes = (time.perf_counter() - start) / 60
        ranked = sasrec_recommend(model, valid_histories, 10, bf16=bf16, exclude_history=exclude_history)
        metrics = ranking_metrics(ranked, valid_targets)
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "minutes": round(minutes, 3),
                "samples": samples,
                "loss": round(loss.item(), 4),
                **metrics,
            }
        )
        progress.set_postfix(loss=f"{loss.item():.3f}", **{SELECTION_METRIC: f"{metrics[SELECTION_METRIC]:.4f}"})
        log.info("SASRec epoch %d loss %.4f valid %s", epoch + 1, loss.item(), metrics)
        if metrics[SELECTION_METRIC] > best:
            best, best_epoch, since_best = metrics[SELECTION_METRIC], epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if out_of_patience(since_best, cfg.patience):
                stopped_by = "patience"
                break
        if cfg.max_minutes and minutes >= cfg.max_minutes:
            stopped_by = "max_minutes"
            log.warning(
                "SASRec stopped by its %.1f-minute cap (sasrec.max_minutes), not by convergence", cfg.max_minutes
            )
            break
    progress.close()
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    summary = {
        "steps": step,
        "samples": samples,
        "epochs": len(history),
        "best_epoch": best_epoch,
        f"best_valid_{SELECTION_METRIC}": best,
        "selection_metric": SELECTION_METRIC,
        "stopped_by": stopped_by,
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(samples / seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
    }
    return model, summary
