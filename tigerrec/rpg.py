"""RPG (Hou et al., "Generating Long Semantic IDs in Parallel for Recommendation", KDD 2025).

Every item has a long ID of ``m`` unordered codes (``ids.scheme=opq``, e.g. 32 codes of 256
values, no collision code). A history item is the mean of its ``m`` code embeddings (the
tokenizer's ``history="items"`` layout, which the TIGER encoder reads too); a small causal
Transformer (TIGER's encoder layers, with a causal relative position bias) reads the sequence;
at every position ``m`` heads predict all codes of the next item at once. Head ``i`` is a
residual projection ``h + SiLU(W_i h + b_i)`` of the final state ``h``; its logits are the
cosine similarities with the embeddings of the codes of position ``i`` (the output matrix of
code position ``i`` is tied to those input embeddings, as in the paper's code), divided by
``model.logit_temperature``.

Training: the mean cross-entropy over the ``m`` codes, at every position of a user's sequence
(the windows of the causal histories), in the training loop TIGER uses. Scoring: an item's
score is the sum of its codes' log-probabilities, computed exactly for every item of the
catalogue; items sharing a full ID tie. Not implemented: the paper's graph-constrained decoding,
an approximate top-k that walks a graph of items with similar IDs, which pays off only on
catalogues too large to score exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoding import Generated
from .model import NUM_SPECIAL, PAD, Dropout, EncoderLayer, RelativeBias, SequenceModel


class RPGModel(SequenceModel):
    kind = "rpg"

    def __init__(self, cfg: ModelConfig, vocab_size: int, item_codes: torch.Tensor, codebook_size: int):
        """``item_codes`` (N, m): the IDs of the catalogue the model scores (a buffer that moves with the
        model but is not saved with it: the run's Semantic IDs are)."""
        super().__init__()
        self.cfg, self.codebook_size = cfg, codebook_size
        self.id_length = item_codes.shape[1]
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD)
        self.drop = Dropout(cfg.input_dropout)
        self.bias = RelativeBias(cfg, bidirectional=False)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        # Head i: h + SiLU(h W_i^T + b_i). Initialised like the other linear layers (not at zero as in
        # the paper's code: Adafactor's steps scale with a parameter's size and barely move zeros).
        self.head_weight = nn.Parameter(torch.empty(self.id_length, cfg.d_model, cfg.d_model))
        self.head_bias = nn.Parameter(torch.zeros(self.id_length, cfg.d_model))
        self.register_buffer("item_codes", torch.as_tensor(item_codes, dtype=torch.long), persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.embed.weight, std=cfg.embed_init_std)
        nn.init.normal_(self.head_weight, std=cfg.d_model**-0.5)

    @property
    def num_items(self) -> int:
        return len(self.item_codes)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final states (B, T, d) of ``tokens`` (B, T, L): position t has read the items up to t."""
        x, mask = self.embed_input(tokens)
        length = tokens.shape[1]
        causal = torch.full((length, length), float("-inf"), device=tokens.device).triu(1)
        # Each position also sees itself, so no row is fully masked (NaN): a leading PAD row, the
        # user token of a request without a user id, attends to itself alone and is hidden from the rest.
        mask = (mask + causal).masked_fill(torch.eye(length, dtype=torch.bool, device=tokens.device), 0.0)
        mask = mask + self.bias(length, length, tokens.device)
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def code_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits (R, m, codebook_size) of every code of the next item after each of the states (R, d)."""
        m, size, d = self.id_length, self.codebook_size, self.cfg.d_model
        heads = states[:, None, :] + F.silu((states @ self.head_weight.flatten(0, 1).T).view(-1, m, d) + self.head_bias)
        # Token NUM_SPECIAL + i * size + c is code c at position i: one (size, d) output matrix per position.
        codes = self.embed.weight[NUM_SPECIAL : NUM_SPECIAL + m * size].view(m, size, d)
        # In fp32: 1 / temperature (~33) would magnify bf16's rounding of the cosines to ~0.1 per logit.
        with torch.autocast(states.device.type, enabled=False):
            cosines = torch.einsum("rmd,mkd->rmk", F.normalize(heads.float(), dim=-1), F.normalize(codes.float(), dim=-1))
        return cosines / self.cfg.logit_temperature

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """Training logits (B * P, m, codebook_size): one row per history position of each sequence, each
        predicting the item after its position, as ``TrainData.batch`` lays out the targets. RPG has no
        decoder: ``decoder_tokens`` (B * P rows) only gives P, so TIGER's training loop serves both kinds."""
        positions = decoder_tokens.shape[0] // tokens.shape[0]
        states = self.encode(tokens)[:, tokens.shape[1] - positions :]  # less a leading user token
        return self.code_logits(states.flatten(0, 1))

    def item_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores (B, N) of every catalogue item after each history: the sum over the item's m codes of the
        codes' log-probabilities (log-softmax per head) at the last item of the history."""
        states = self.encode(tokens)
        present = tokens[..., 0] != PAD  # (B, T), right-padded
        last = (present * torch.arange(tokens.shape[1], device=tokens.device)).argmax(1)
        log_probs = self.code_logits(states[torch.arange(len(tokens), device=tokens.device), last]).log_softmax(-1)
        scores = torch.zeros(len(tokens), self.num_items, device=tokens.device)
        for position in range(self.id_length):  # gather each head's log-probability of every item's code
            scores += log_probs[:, position].index_select(1, self.item_codes[:, position])
        return scores

    @torch.no_grad()
    def rank(self, tokens: torch.Tensor, k: int, temperature: float | None = None,
             generator: torch.Generator | None = None, allowed: torch.Tensor | None = None) -> Generated:
        """The ``k`` best items of the catalogue for each history, by exact scores (``item_scores``).

        With ``temperature``, ``k`` items are sampled without replacement from the softmax of the
        scores / temperature over the catalogue (Gumbel top-k), in the order drawn; scores stay the
        model's. ``allowed`` (B, N) bool keeps each row's results to those items. Beyond the items
        a row may have, items are -1 and scores -inf."""
        scores = self.item_scores(tokens)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        keep = min(k, self.num_items)
        if temperature is None:
            top, items = scores.topk(keep, dim=1)
        else:
            uniform = torch.rand(scores.shape, device=scores.device, generator=generator).clamp(1e-10, 1.0)
            items = (scores / max(temperature, 1e-6) - torch.log(-torch.log(uniform))).topk(keep, dim=1)[1]
            top = scores.gather(1, items)
        items = torch.where(torch.isfinite(top), items, -1)  # past the end of a filtered row
        if keep < k:
            items = F.pad(items, (0, k - keep), value=-1)
            top = F.pad(top, (0, k - keep), value=float("-inf"))
        codes = torch.where((items >= 0)[..., None], self.item_codes[items.clamp(min=0)], 0)
        return Generated(items, codes, top)
