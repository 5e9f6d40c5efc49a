"""The sequence model: a small T5-style Transformer encoder-decoder.

The encoder reads [user token, Semantic ID tokens of the history]; the decoder
generates the 4 tokens of the next item. A pooled history ("items", "pooled")
gives each history item one token, the mean of its code embeddings. With a causal
history ("items") the encoder runs under a causal mask, so one pass over a user's sequence yields the memory for every
position, and the decoder predicts the next item after each position at once.
As in T5: pre-norm RMSNorm, no biases, ReLU feed-forward, relative position bias
shared across the layers of a stack, shared input embeddings. The output layer of
decoder step p only scores the codes of position p (a token means "code c at
position p"), so every step is a softmax over the codebook instead of the whole
vocabulary.

``SequenceModel`` is the interface every model kind implements (``registry`` finds a kind's
class by its name); it also holds what the kinds share. RPG's model (``tigerrec/rpg.py``)
reuses the embedding pooling, the encoder layers and the relative position bias.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CAUSAL_HISTORIES, HISTORIES, POOLED_HISTORIES, EvalConfig, ModelConfig, RunConfig
from .decoding import Generated, ItemFilter, PrefixTrie, generate, take_rows
from .io import atomic_path
from .sequences import PAD, Tokenizer


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing of (key - query) distances: exact for small ones, log-spaced up to max_distance."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_scaled = (
        exact
        + (
            torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
        ).long()
    )
    return bucket + torch.where(distance < exact, distance, log_scaled.clamp(max=num_buckets - 1))


class Dropout(nn.Module):
    """Inverted dropout whose CPU masks come from 8 random bits per element.

    torch's CPU bernoulli costs more than this model's matmuls; integer random
    bits are ~7x cheaper. The drop rate is rounded to a multiple of 1/256 and the
    scale matches it exactly. On GPUs the usual kernel is used.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.randint(-(2**31), 2**31 - 1, ((n + 3) // 4,), dtype=torch.int32).view(torch.uint8)[:n]
        keep = (bits >= self.threshold).view(x.shape)
        return x * keep * (256 / (256 - self.threshold))


class RelativeBias(nn.Module):
    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.cfg, self.bidirectional = cfg, bidirectional
        self.embedding = nn.Embedding(cfg.relative_buckets, cfg.num_heads)

    def forward(self, q_len: int, k_len: int, device, q_offset: int = 0) -> torch.Tensor:
        """Bias (1, heads, q_len, k_len) for queries at positions q_offset.. over keys at 0..k_len-1."""
        queries = torch.arange(q_offset, q_offset + q_len, device=device)
        relative = torch.arange(k_len, device=device)[None, :] - queries[:, None]
        buckets = relative_position_bucket(
            relative, self.bidirectional, self.cfg.relative_buckets, self.cfg.relative_max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, heads, q, k)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.num_heads * cfg.head_dim
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=False)
        self.out = nn.Linear(inner, cfg.d_model, bias=False)
        self.drop = Dropout(cfg.attention_dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(self, x, mask, kv):
        """Attend from ``x`` to keys/values ``kv`` (from ``keys_values``) under the additive ``mask``."""
        q = self.split_heads(self.q(x))
        k, v = kv
        # Beam search: the beams of one input share its memory, so fold them into the
        # query axis instead of copying the memory once per beam.
        rows, heads, length, dim = q.shape
        groups = rows // k.shape[0]
        if groups > 1:
            q = (
                q.view(k.shape[0], groups, heads, length, dim)
                .transpose(1, 2)
                .reshape(k.shape[0], heads, groups * length, dim)
            )
        # Plain matmul attention: for these short sequences it beats the fused CPU kernels,
        # whose backward pass with an additive bias is slow.
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + mask
        y = self.drop(scores.softmax(-1)).to(v.dtype) @ v
        if groups > 1:
            y = y.view(k.shape[0], heads, groups, length, dim).transpose(1, 2).reshape(rows, heads, length, dim)
        return self.out(y.transpose(1, 2).reshape(rows, length, -1))


class FeedForward(nn.Sequential):
    def __init__(self, cfg: ModelConfig):
        # No dropout on the 1024-wide hidden layer: its masks cost more than the matmuls on a CPU. The ReLU
        # works in place: a fresh hidden-sized tensor per layer and step is a cost of its own when decoding.
        super().__init__(
            nn.Linear(cfg.d_model, cfg.d_ff, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.d_ff, cfg.d_model, bias=False),
        )


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.ff = nn.RMSNorm(cfg.d_model), FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, mask):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, mask, self.attn.keys_values(h)))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.self_attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.cross_attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm3, self.ff = nn.RMSNorm(cfg.d_model), FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, self_mask, cross_mask, memory_kv, past_kv=None):
        """Returns the output and this layer's self-attention keys/values (past ones included)."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        x = x + self.drop(self.self_attn(h, self_mask, (k, v)))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_mask, memory_kv))
        return x + self.drop(self.ff(self.norm3(x))), (k, v)


def save_model(model: nn.Module, path: str | Path) -> None:
    """A model's weights as safetensors, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


class SequenceModel(nn.Module, abc.ABC):
    """The interface of a model kind (``model.kind``), and what the kinds share: the token embedding
    ``embed`` (history items pooled from their code tokens), the initialisation, the parameter count.

    A kind's class is registered under its ``kind`` (``registry.register``) beside the settings it
    works with (``config.MODEL_KINDS``). Training calls ``forward`` and takes the cross-entropy of its
    logits against the target codes; evaluation, recommendations and serving call ``rank``."""

    kind = ""  # its model.kind
    generates_ids = False  # ranks by generating IDs code by code, so it may generate prefixes of unseen items
    embed: nn.Embedding

    @classmethod
    def build(cls, tokenizer: Tokenizer, cfg: RunConfig, codebooks: torch.Tensor | None = None) -> SequenceModel:
        """A freshly initialised model for ``tokenizer``'s vocabulary and IDs; ``codebooks`` (levels,
        codebook_size, dim) are the quantiser's codewords with model.embed_init=codebooks. Every registered
        kind has one (an ensemble is made from trained models instead: ``ensemble``)."""
        raise NotImplementedError(f"{cls.__name__} is not built from a config")

    @abc.abstractmethod
    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """Training logits (rows, id_length, codebook_size) for the target codes that ``TrainData.batch``
        lays out with ``tokens`` and ``decoder_tokens``: one row per target."""

    @abc.abstractmethod
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
        """The ``k`` best items after each row of encoder ``tokens``, best first (``decoding.rank``)."""

    @classmethod
    def catalogue_trie(cls, codes, codebook_size: int) -> PrefixTrie | None:
        """The prefix trie of the catalogue's IDs that ``rank`` walks; None for a kind that scores items."""
        return None

    def set_catalogue(self, item_codes: torch.Tensor, cfg: EvalConfig) -> None:
        """Rank the catalogue of ``item_codes`` (N, id_length) from now on (items added after training);
        a kind whose catalogue is its trie (``catalogue_trie``) has nothing to change."""

    def configure_decoding(self, cfg: EvalConfig) -> None:
        """Set up decoding as ``cfg`` says (call it again after loading other weights)."""

    @classmethod
    def ensemble(cls, members: list[SequenceModel]) -> SequenceModel:
        """``members`` ranked as one model (train.members > 1, for kinds whose ``ModelKind.ensembles``)."""
        raise TypeError(f"model.kind={cls.kind} has no ensemble")

    def save(self, path: str | Path) -> None:
        save_model(self, path)

    def load(self, path: str | Path) -> None:
        """The weights in ``path`` (``save``), onto the device the model is on."""
        self.load_state_dict(load_file(str(path), device=str(next(self.parameters()).device)))

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
        """Additive mask (B, 1, 1, T): a large negative number on padding keys. Not -inf: under a causal
        mask a leading padding position (an anonymous request's absent user token) sees no other key,
        and a query with every key at -inf would turn its row, and through it every row, into NaN."""
        mask = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        return mask.masked_fill(tokens == PAD, -1e9)[:, None, None, :]

    def embed_input(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors (B, T, d) and the padding mask of ``tokens``: (B, T) code tokens, or
        (B, T, L) with a pooled history (``POOLED_HISTORIES``), where a position is the mean of its non-PAD tokens."""
        if tokens.dim() == 2:
            return self.embed(tokens), self.padding_mask(tokens)
        present = (tokens != PAD).unsqueeze(-1)
        vectors = (self.embed(tokens) * present).sum(2) / present.sum(2).clamp(min=1)
        return vectors, self.padding_mask(tokens[..., 0])


class BeamSearch:
    """Ranking by generating IDs: beam search over the catalogue's prefix trie (``decoding.generate``)."""

    generates_ids = True

    @classmethod
    def catalogue_trie(cls, codes, codebook_size: int) -> PrefixTrie:
        return PrefixTrie(codes, codebook_size)

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
        """``beam_size`` beams (default ``k``), constrained to the catalogue by ``trie`` unless ``constrained``
        is False."""
        if allowed is not None and not constrained:
            raise ValueError("allowed needs constrained decoding")
        return generate(self, tokens, trie, beam_size or k, k, constrained, temperature, generator, allowed)

    @classmethod
    def ensemble(cls, members: list[TigerModel]) -> TigerEnsemble:
        return TigerEnsemble(members)


class TigerModel(BeamSearch, SequenceModel):
    kind = "tiger"

    def __init__(self, cfg: ModelConfig, vocab_size: int, id_length: int, codebook_size: int):
        super().__init__()
        if cfg.history not in HISTORIES:
            raise ValueError(f"model.history must be one of {HISTORIES}, got {cfg.history!r}")
        self.cfg, self.id_length, self.codebook_size = cfg, id_length, codebook_size
        # Causal histories train every position of a sequence at once; pooled ones read each item as one token.
        self.causal = cfg.history in CAUSAL_HISTORIES
        self.tokens_per_item = 1 if cfg.history in POOLED_HISTORIES else id_length
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD)
        self.drop = Dropout(cfg.dropout)
        self.input_drop = Dropout(cfg.input_dropout)  # on the encoder's input vectors
        self.encoder_bias = RelativeBias(cfg, bidirectional=not self.causal)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.RMSNorm(cfg.d_model)
        self.decoder_bias = RelativeBias(cfg, bidirectional=False)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.RMSNorm(cfg.d_model)
        # One output matrix per ID position: (position, code, d_model).
        self.head = nn.Parameter(torch.empty(id_length, codebook_size, cfg.d_model))
        self.apply(self._init)
        nn.init.normal_(self.embed.weight, std=cfg.embed_init_std)
        nn.init.normal_(self.head, std=cfg.d_model**-0.5)

    @classmethod
    def build(cls, tokenizer: Tokenizer, cfg: RunConfig, codebooks: torch.Tensor | None = None) -> TigerModel:
        model = cls(cfg.model, tokenizer.vocab_size, tokenizer.id_length, tokenizer.codebook_size)
        if codebooks is not None:
            model.init_code_embeddings(tokenizer, codebooks, cfg.model.embed_init_std)
        return model

    def init_code_embeddings(self, tokenizer: Tokenizer, codebooks: torch.Tensor, std: float) -> None:
        """Start each level's code tokens from the quantiser's codewords (levels, codebook_size, dim): centred,
        carried to d_model by one fixed random projection per level and scaled to ``std``, so the geometry
        of the codewords (which codes are close) is what the model starts from (ModelConfig.embed_init)."""
        generator = torch.Generator().manual_seed(0)
        d_model = self.embed.weight.shape[1]
        with torch.no_grad():
            for level, codewords in enumerate(codebooks.float().cpu()):
                projection = torch.randn(codewords.shape[1], d_model, generator=generator)
                projected = (codewords - codewords.mean(0)) @ projection
                projected = projected / projected.std()
                rows = tokenizer.code_tokens(level).to(self.embed.weight.device)
                self.embed.weight[rows] = (projected * std).to(self.embed.weight)

    def encode(self, tokens: torch.Tensor):
        """Encode input tokens; returns per-layer cross-attention keys/values and their mask."""
        x, mask = self.embed_input(tokens)
        x = self.input_drop(x)
        length = tokens.shape[1]
        self_mask = self.encoder_bias(length, length, tokens.device) + mask
        if self.causal:  # position t sees the user token and the tokens up to t
            self_mask = self_mask + torch.full((length, length), float("-inf"), device=tokens.device).triu(1)
        for layer in self.encoder_layers:
            x = layer(x, self_mask)
        memory = self.drop(self.encoder_norm(x))
        # Keys/values for every decoder layer, computed once per input (beam search reuses them).
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers], mask

    @staticmethod
    def memory_rows(memory_kv, memory_mask, inputs: torch.Tensor):
        """``encode``'s output for the input rows ``inputs`` (one per decoder row, repeats allowed), so
        that ``decode`` can run on some beams only."""
        return [(take_rows(k, inputs), take_rows(v, inputs)) for k, v in memory_kv], memory_mask[inputs]

    def decode(self, decoder_tokens: torch.Tensor, memory_kv, memory_mask, cache: list | None = None) -> torch.Tensor:
        """Logits (B, P, codebook_size) for the next code after each of the P decoder tokens.

        Training passes [BOS, c1, c2, c3] at once. Generation passes one token per
        step with a ``cache`` (a list, empty at first) that keeps every layer's
        self-attention keys/values, so earlier positions are not recomputed.
        """
        past = cache[0][0].shape[2] if cache else 0
        length, total = decoder_tokens.shape[1], past + decoder_tokens.shape[1]
        device = decoder_tokens.device
        causal = torch.full((length, total), float("-inf"), device=device).triu(past + 1)
        self_mask = self.decoder_bias(length, total, device, q_offset=past) + causal
        x = self.drop(self.embed(decoder_tokens))
        past_kv = list(cache) if cache else [None] * len(self.decoder_layers)
        new_kv = []
        for layer, kv, layer_past in zip(self.decoder_layers, memory_kv, past_kv):
            x, layer_kv = layer(x, self_mask, memory_mask, kv, layer_past)
            new_kv.append(layer_kv)
        if cache is not None:
            cache[:] = new_kv
        x = self.drop(self.decoder_norm(x))
        # Rescale as T5 does with tied embeddings, keeping logits well scaled at init.
        return torch.einsum("bpd,pkd->bpk", x * self.cfg.d_model**-0.5, self.head[past:total].to(x.dtype))

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """Training logits. With a causal history, ``decoder_tokens`` holds one row per history
        position of each sequence (B * positions rows), each predicting the item after its position."""
        memory_kv, memory_mask = self.encode(tokens)
        if self.causal:
            positions = decoder_tokens.shape[0] // tokens.shape[0]
            memory_mask = memory_mask + self.prefix_mask(
                tokens.shape[1], positions, self.tokens_per_item, decoder_tokens.shape[1], tokens.device
            )
        return self.decode(decoder_tokens, memory_kv, memory_mask)

    @staticmethod
    def prefix_mask(memory_length: int, positions: int, tokens_per_item: int, id_length: int, device) -> torch.Tensor:
        """Additive cross-attention mask (1, 1, positions * id_length, memory_length): the decoder row of
        history position i sees memory up to the last token of that item (and a leading user token).

        Attention folds the rows of one sequence into its query axis, position-major."""
        offset = memory_length - positions * tokens_per_item  # 1 with a user token, else 0
        row = torch.arange(positions, device=device).repeat_interleave(id_length)
        hidden = torch.arange(memory_length, device=device)[None, :] > offset + (row[:, None] + 1) * tokens_per_item - 1
        return torch.zeros(hidden.shape, device=device).masked_fill(hidden, float("-inf"))[None, None]


class TigerEnsemble(BeamSearch, SequenceModel):
    """Several TIGER models over the same Semantic IDs and inputs, decoded as one: each step's
    distribution over the next code is the normalised geometric mean of the members' (their
    log-probabilities averaged, renormalised by the beam search's log-softmax). Members trained from
    other seeds disagree on the items each is unsure of, so the mean ranks more of the right ones on
    top. ``encode``/``decode`` are the ones ``decoding.generate`` calls on a single ``TigerModel``."""

    kind = "tiger"

    def __init__(self, members: list[TigerModel]):
        super().__init__()
        if not members or not all(isinstance(m, TigerModel) for m in members):
            raise ValueError("an ensemble needs one or more TIGER models")
        first = members[0]
        for m in members[1:]:
            if (m.id_length, m.codebook_size, m.embed.num_embeddings, m.cfg.history, m.cfg.use_user_token) != (
                first.id_length,
                first.codebook_size,
                first.embed.num_embeddings,
                first.cfg.history,
                first.cfg.use_user_token,
            ):
                raise ValueError("ensemble members must share Semantic IDs, vocabulary, history kind and user token")
        self.members = nn.ModuleList(members)
        self.cfg, self.id_length, self.codebook_size = first.cfg, first.id_length, first.codebook_size

    def encode(self, tokens: torch.Tensor):
        """Every member's memory; the mask slot is unused (each member keeps its own)."""
        return [m.encode(tokens) for m in self.members], None

    def memory_rows(self, memory_kv, memory_mask, inputs: torch.Tensor):
        """Every member's memory for the input rows ``inputs`` (``TigerModel.memory_rows``)."""
        return [m.memory_rows(kv, mask, inputs) for m, (kv, mask) in zip(self.members, memory_kv)], None

    def decode(self, decoder_tokens: torch.Tensor, memory_kv, memory_mask, cache: list | None = None) -> torch.Tensor:
        """Mean log-probabilities (B, P, codebook_size). ``cache`` holds the members' layer caches one
        after another, so the beam search reorders them all as it would one model's."""
        layers = [len(m.decoder_layers) for m in self.members]
        new_cache, log_probs, start = [], [], 0
        for member, (kv, mask), n in zip(self.members, memory_kv, layers):
            member_cache = None if cache is None else list(cache[start : start + n])
            log_probs.append(member.decode(decoder_tokens, kv, mask, member_cache).float().log_softmax(-1))
            if cache is not None:
                new_cache.extend(member_cache)
            start += n
        if cache is not None:
            cache[:] = new_cache
        return torch.stack(log_probs).mean(0)

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """The members' mean log-probabilities of every target code (what the ensemble ranks by); each
        member trains on its own (``members.train_members``)."""
        return torch.stack([m(tokens, decoder_tokens).float().log_softmax(-1) for m in self.members]).mean(0)
