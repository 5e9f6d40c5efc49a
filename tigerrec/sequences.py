"""From item sequences to token batches.

Vocabulary: PAD, BOS, then ``id_length x codebook_size`` codeword tokens (token
= "code c at position p"), then ``user_buckets`` user tokens (and one for anonymous
requests, if reserved). The encoder input
is [user token, the 4 tokens of each of the last ``max_history`` items]; the
target is the next item's 4 codes. With a pooled history ("items", "pooled") the input
keeps one row of 4 tokens per item, (B, [1 +] H, 4), the user token padded with PAD.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .config import CAUSAL_HISTORIES, POOLED_HISTORIES

PAD, BOS = 0, 1
NUM_SPECIAL = 2


def code_offsets(id_length: int, codebook_size: int, device=None) -> torch.Tensor:
    """The token of code 0 at each ID position: code c at position p is token ``offsets[p] + c``."""
    return NUM_SPECIAL + codebook_size * torch.arange(id_length, device=device)


def user_bucket(user_id: str, buckets: int) -> int:
    """Stable hash of a user id into ``buckets`` (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(str(user_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


class Tokenizer:
    def __init__(
        self,
        item_codes: np.ndarray,
        codebook_size: int,
        user_buckets: int,
        max_history: int,
        use_user_token: bool = True,
        history: str = "codes",
        anonymous_token: bool = False,
    ):
        """``anonymous_token``: reserve a user token for requests without a user id
        (ModelConfig.anonymous_share); without it they get PAD (masked)."""
        self.history = history  # ModelConfig.history
        self.causal = history in CAUSAL_HISTORIES  # every history position has a target
        self.item_codes = torch.as_tensor(item_codes, dtype=torch.long)  # (items, id_length)
        self.id_length = self.item_codes.shape[1]
        self.codebook_size = codebook_size
        self.user_buckets = user_buckets
        self.max_history = max_history
        self.use_user_token = use_user_token
        self.code_offsets = code_offsets(self.id_length, codebook_size)
        self.item_tokens = self.item_codes + self.code_offsets  # (items, id_length)
        # Row ``num_items`` is all PAD: history slots beyond a user's length point there.
        self._item_tokens_padded = torch.cat([self.item_tokens, torch.full((1, self.id_length), PAD)])
        self.user_offset = NUM_SPECIAL + codebook_size * self.id_length
        self.anonymous_user = self.user_offset + user_buckets if anonymous_token else PAD
        self.vocab_size = self.user_offset + user_buckets + anonymous_token

    @property
    def num_items(self) -> int:
        return len(self.item_codes)

    def code_tokens(self, position: int) -> torch.Tensor:
        """The tokens of codes 0..codebook_size-1 at ID position ``position``."""
        return self.code_offsets[position] + torch.arange(self.codebook_size)

    def user_token(self, user_id: str | None) -> int:
        if user_id is None:
            return self.anonymous_user
        return self.user_offset + user_bucket(user_id, self.user_buckets)

    def encoder_input(self, histories: torch.Tensor, user_tokens: torch.Tensor) -> torch.Tensor:
        """histories: (B, H) item indices, -1 = padding (right side). Returns (B, [1+] H*id_length) tokens,
        or (B, [1+] H, id_length) with a pooled history, cut to the longest history in the batch so no
        batch pays for padding it does not need."""
        longest = int((histories >= 0).sum(1).max()) if len(histories) else 0
        histories = histories[:, : max(longest, 1)]
        tokens = self._item_tokens_padded[torch.where(histories >= 0, histories, self.num_items)]
        if self.history not in POOLED_HISTORIES:
            tokens = tokens.flatten(1)
            return torch.cat([user_tokens[:, None], tokens], dim=1) if self.use_user_token else tokens
        if self.use_user_token:  # one more row: [user token, PAD, PAD, ...]
            user = torch.full((len(tokens), 1, tokens.shape[2]), PAD, dtype=torch.long)
            user[:, 0, 0] = user_tokens
            tokens = torch.cat([user, tokens], dim=1)
        return tokens

    def decoder_input(self, target_codes: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: [BOS, token(c1), ..., token(c_{L-1})]."""
        bos = torch.full((len(target_codes), 1), BOS, dtype=torch.long, device=target_codes.device)
        return torch.cat([bos, target_codes[:, :-1] + self.code_offsets[:-1].to(target_codes.device)], dim=1)


@dataclass
class Examples:
    """(history, target) pairs as padded arrays: ``histories[i, :lengths[i]]`` are item indices, oldest first."""

    histories: np.ndarray  # (M, max_history) int64, -1 padded
    lengths: np.ndarray  # (M,)
    targets: np.ndarray  # (M,) item index, -1 when unknown (inference)
    users: np.ndarray  # (M,) user index
    # Each example's whole history (an object array of item-index arrays) where it may be longer than
    # the model's input window: what eval.exclude_history keeps out of the ranking. None: ``histories``.
    seen: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_histories(
        cls, histories: list[np.ndarray], targets, users, max_history: int, keep_seen: bool = False
    ) -> Examples:
        """The last ``max_history`` items of each history as the model's input; ``keep_seen`` also keeps
        every history whole (``seen``), as the held-out examples do."""
        n = len(histories)
        padded = np.full((n, max_history), -1, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for i, history in enumerate(histories):
            recent = history[-max_history:]
            padded[i, : len(recent)] = recent
            lengths[i] = len(recent)
        if n and lengths.min() == 0:
            raise ValueError(f"{int((lengths == 0).sum())} examples have an empty history")
        seen = None
        if keep_seen:
            seen = np.empty(n, dtype=object)
            for i, history in enumerate(histories):
                seen[i] = np.asarray(history, dtype=np.int64)
        return cls(padded, lengths, np.asarray(targets, dtype=np.int64), np.asarray(users, dtype=np.int64), seen)

    @classmethod
    def training(cls, train_sequences: list[np.ndarray], max_history: int, chunk: int = 1 << 20) -> Examples:
        """Every prefix of every user's training part: history s[:t] -> target s[t], t >= 1.

        Built with array indexing, a ``chunk`` of examples at a time: no Python object per example, so
        tens of millions of interactions fit in the padded arrays alone."""
        sizes = np.array([len(s) for s in train_sequences], dtype=np.int64)
        flat = np.concatenate(train_sequences).astype(np.int64) if len(sizes) else np.zeros(0, dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        per_user = np.maximum(sizes - 1, 0)  # targets per user: every item after the first
        users = np.repeat(np.arange(len(sizes)), per_user)
        # t: each target's position in its sequence (1 .. size - 1).
        t = np.arange(len(users)) - np.repeat(np.cumsum(per_user) - per_user, per_user) + 1
        begin = np.maximum(t - max_history, 0)
        lengths = t - begin
        histories = np.full((len(users), max_history), -1, dtype=np.int64)
        offsets = np.arange(max_history)
        for lo in range(0, len(users), chunk):
            part = slice(lo, lo + chunk)
            index = (starts[users[part]] + begin[part])[:, None] + offsets
            inside = offsets < lengths[part, None]
            histories[part] = np.where(inside, flat[np.where(inside, index, 0)], -1)
        return cls(histories, lengths, flat[starts[users] + t], users)

    @classmethod
    def windows(cls, train_sequences: list[np.ndarray], max_history: int) -> Examples:
        """The ``training_windows`` of every user, window w as history w[:-1] and target w[-1]; with
        every history position a target (a causal ``model.history``) each target occurs once."""
        histories, targets, users = [], [], []
        for user, seq in enumerate(train_sequences):
            for window in training_windows([seq], max_history):
                histories.append(window[:-1])
                targets.append(window[-1])
                users.append(user)
        return cls.from_histories(histories, targets, users, max_history)

    def next_items(self) -> np.ndarray:
        """(M, max_history) the item after each history position (-1 past the end): for windows."""
        following = np.full_like(self.histories, -1)
        following[:, :-1] = self.histories[:, 1:]
        following[np.arange(len(self)), self.lengths - 1] = self.targets
        return following

    def subset(self, index: np.ndarray) -> Examples:
        return Examples(
            self.histories[index],
            self.lengths[index],
            self.targets[index],
            self.users[index],
            None if self.seen is None else self.seen[index],
        )

    def seen_items(self, index: np.ndarray) -> list[np.ndarray]:
        """The items that the examples ``index`` have seen: their whole histories, not only the input window."""
        if self.seen is not None:
            return list(self.seen[index])
        return [history[:length] for history, length in zip(self.histories[index], self.lengths[index])]


def history_pairs(histories: list[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) indices on ``device`` of every item of each row's history: the cells of a
    (rows, items) matrix that ranking with the history excluded leaves out."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    items = np.concatenate(histories) if len(histories) else np.zeros(0)
    return torch.from_numpy(rows).to(device), torch.from_numpy(items.astype(np.int64)).to(device)


def training_windows(train_sequences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each training part into windows of up to max_len + 1 items, newest first, so that every
    item after a user's first is a target exactly once when every position of a window predicts
    the next item (one pass covers all of a user's training targets)."""
    windows = []
    for seq in train_sequences:
        for end in range(len(seq), 1, -max_len):
            windows.append(seq[max(0, end - max_len - 1) : end])
    return windows


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, chunk_batches: int = 64
) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples, deterministic in (seed, epoch).

    Shuffle, cut into chunks of ``chunk_batches`` batches, sort each chunk by
    length, cut into batches, shuffle the batches: randomness stays, padding mostly goes.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches = []
    for begin in range(0, len(order), chunk):
        part = order[begin : begin + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
