"""RPG (Hou et al., "Generating Long Semantic IDs in Parallel for Recommendation", KDD 2025).

Every item has a long ID of ``m`` unordered codes (``ids.scheme=opq``, e.g. 16 codes of 256
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
catalogue (``eval.decoding=exact``); items sharing a full ID tie.

Graph-constrained decoding (``eval.decoding=graph``, the paper's approximate top-k for catalogues
too large to score exactly): each item is linked to the ``graph_neighbors`` items whose IDs are
most alike, the sum over code positions of the cosine similarity of the two codes' embeddings
(the quantity the logits are made of). Decoding starts from a beam of random items and, for
``graph_steps`` steps, scores the beam's neighbours and keeps the best ``beam`` items seen.
Building the graph compares every pair of items (O(N^2 m), seconds for Amazon-sized catalogues);
for millions of items an approximate nearest-neighbour index would take its place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig, ModelConfig, RunConfig
from .decoding import Generated, ItemFilter, PrefixTrie
from .model import Dropout, EncoderLayer, RelativeBias, SequenceModel
from .sequences import NUM_SPECIAL, PAD, Tokenizer


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
        self.graph: torch.Tensor | None = None  # (N, neighbours) item graph: graph decoding when set
        self.graph_steps = 0
        self.apply(self._init)
        nn.init.normal_(self.embed.weight, std=cfg.embed_init_std)
        nn.init.normal_(self.head_weight, std=cfg.d_model**-0.5)

    @classmethod
    def build(cls, tokenizer: Tokenizer, cfg: RunConfig, codebooks: torch.Tensor | None = None) -> RPGModel:
        """The catalogue it scores is the IDs of every item the tokenizer knows."""
        return cls(cfg.model, tokenizer.vocab_size, tokenizer.item_codes, tokenizer.codebook_size)

    @property
    def num_items(self) -> int:
        return len(self.item_codes)

    def set_catalogue(self, item_codes: torch.Tensor, cfg: EvalConfig) -> None:
        if len(item_codes) != len(self.item_codes):
            self.item_codes = item_codes.to(self.item_codes.device)
            self.configure_decoding(cfg)  # a graph over the grown catalogue

    def configure_decoding(self, cfg: EvalConfig) -> None:
        """Exact scores, or graph decoding on a graph built from the current weights (eval.decoding)."""
        self.use_graph_decoding(cfg.graph_neighbors if cfg.decoding == "graph" else 0, cfg.graph_steps)

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
            cosines = torch.einsum(
                "rmd,mkd->rmk", F.normalize(heads.float(), dim=-1), F.normalize(codes.float(), dim=-1)
            )
        return cosines / self.cfg.logit_temperature

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """Training logits (B * P, m, codebook_size): one row per history position of each sequence, each
        predicting the item after its position, as ``TrainData.batch`` lays out the targets. RPG has no
        decoder: ``decoder_tokens`` (B * P rows) only gives P, so TIGER's training loop serves both kinds."""
        positions = decoder_tokens.shape[0] // tokens.shape[0]
        states = self.encode(tokens)[:, tokens.shape[1] - positions :]  # less a leading user token
        return self.code_logits(states.flatten(0, 1))

    def next_code_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, m, codebook_size) of every code of the next item after each history
        (log-softmax per head, at the last item of the history)."""
        states = self.encode(tokens)
        present = tokens[..., 0] != PAD  # (B, T), right-padded
        last = (present * torch.arange(tokens.shape[1], device=tokens.device)).argmax(1)
        return self.code_logits(states[torch.arange(len(tokens), device=tokens.device), last]).log_softmax(-1)

    def item_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores (B, N) of every catalogue item after each history: the sum over the item's m codes of the
        codes' log-probabilities."""
        log_probs = self.next_code_log_probs(tokens)
        scores = torch.zeros(len(tokens), self.num_items, device=tokens.device)
        for position in range(self.id_length):  # gather each head's log-probability of every item's code
            scores += log_probs[:, position].index_select(1, self.item_codes[:, position])
        return scores

    @torch.no_grad()
    def use_graph_decoding(self, neighbors: int, steps: int, block: int = 1024) -> None:
        """Rank by graph-constrained decoding from now on, on a graph built from the current weights
        (``neighbors`` = 0: exact scoring again)."""
        if neighbors <= 0:
            self.graph, self.graph_steps = None, 0
            return
        m, size, n = self.id_length, self.codebook_size, self.num_items
        codes = F.normalize(self.embed.weight[NUM_SPECIAL : NUM_SPECIAL + m * size].float().view(m, size, -1), dim=-1)
        similarity = codes @ codes.transpose(1, 2)  # (m, size, size): cosine of two codes at one position
        keep = min(neighbors, n - 1)
        graph = torch.empty(n, keep, dtype=torch.long, device=codes.device)
        for begin in range(0, n, block):
            rows = torch.arange(begin, min(begin + block, n), device=codes.device)
            total = torch.zeros(len(rows), n, device=codes.device)
            for position in range(m):  # sum over positions of the similarity of the two items' codes
                total += (
                    similarity[position]
                    .index_select(0, self.item_codes[rows, position])
                    .index_select(1, self.item_codes[:, position])
                )
            total[torch.arange(len(rows)), rows] = float("-inf")  # no self-loops
            graph[rows] = total.topk(keep, dim=1).indices
        self.graph, self.graph_steps = graph, steps

    def graph_search(
        self, log_probs: torch.Tensor, beam: int, allowed: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``beam`` best items (B, beam) and their scores that graph propagation finds: from random items,
        ``graph_steps`` times score the beam and its neighbours and keep the best ``beam`` distinct ones."""
        beam = min(beam, self.num_items)
        # Random starts (a repeat only leaves the first beam a little smaller).
        current = torch.randint(self.num_items, (len(log_probs), beam), generator=generator, device=log_probs.device)
        for _ in range(self.graph_steps):
            candidates = torch.cat([current, self.graph[current].flatten(1)], dim=1).sort(dim=1).values
            scores = torch.zeros(candidates.shape, device=log_probs.device)
            for position in range(self.id_length):  # the exact scores of the candidates
                scores += log_probs[:, position].gather(1, self.item_codes[:, position][candidates])
            duplicate = torch.zeros_like(candidates, dtype=torch.bool)
            duplicate[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
            scores = scores.masked_fill(duplicate, float("-inf"))
            if allowed is not None:
                scores = scores.masked_fill(~allowed.gather(1, candidates), float("-inf"))
            top, index = scores.topk(beam, dim=1)
            current = candidates.gather(1, index)
        return current, top

    @torch.no_grad()
    def rank(
        self,
        tokens: torch.Tensor,
        k: int,
        trie: PrefixTrie | None = None,
        beam_size: int | None = None,
        constrained: bool = True,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        allowed: ItemFilter | None = None,
    ) -> Generated:
        """The ``k`` best items of the catalogue for each history, by exact scores (``item_scores``), or
        among the ``max(k, beam_size)`` items that graph decoding finds (``use_graph_decoding``). Every
        result is an item of the catalogue: ``trie`` and ``constrained`` do not apply.

        With ``temperature``, ``k`` items are sampled without replacement from the softmax of the
        scores / temperature over the catalogue (Gumbel top-k), in the order drawn; scores stay the
        model's. ``allowed`` (an ``ItemFilter``) keeps each row's results to its items. Beyond the items
        a row may have, items are -1 and scores -inf."""
        if allowed is not None:  # every item is scored anyway: a (B, N) mask costs what the scores do
            allowed = allowed.mask(self.num_items, tokens.device)
        if self.graph is not None and temperature is None:
            if generator is None:  # the same start for the same request
                generator = torch.Generator(tokens.device).manual_seed(0)
            items, top = self.graph_search(self.next_code_log_probs(tokens), max(k, beam_size or k), allowed, generator)
            items, top = items[:, :k], top[:, :k]
            items = torch.where(torch.isfinite(top), items, -1)
            return self._generated(items, top, k)
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
        return self._generated(items, top, k)

    def _generated(self, items: torch.Tensor, top: torch.Tensor, k: int) -> Generated:
        """Results padded to ``k`` columns (items -1, scores -inf), with the items' codes."""
        if items.shape[1] < k:
            top = F.pad(top, (0, k - items.shape[1]), value=float("-inf"))
            items = F.pad(items, (0, k - items.shape[1]), value=-1)
        codes = torch.where((items >= 0)[..., None], self.item_codes[items.clamp(min=0)], 0)
        return Generated(items, codes, top)
