"""The sequence model: a small T5-style Transformer encoder-decoder.

The encoder reads [user token, Semantic ID tokens of the history]; the decoder
generates the 4 tokens of the next item. As in T5: pre-norm RMSNorm, no biases,
ReLU feed-forward, relative position bias shared across the layers of a stack,
shared input embeddings. The output layer of decoder step p only scores the
codes of position p (a token means "code c at position p"), so every step is a
softmax over the codebook instead of the whole vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

PAD, BOS = 0, 1
NUM_SPECIAL = 2


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucketing of (key - query) distances: exact for small ones, log-spaced up to max_distance."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_scaled = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    return bucket + torch.where(distance < exact, distance, log_scaled.clamp(max=num_buckets - 1))


class RelativeBias(nn.Module):
    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.cfg, self.bidirectional = cfg, bidirectional
        self.embedding = nn.Embedding(cfg.relative_buckets, cfg.num_heads)

    def forward(self, q_len: int, k_len: int, device) -> torch.Tensor:
        relative = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.cfg.relative_buckets, self.cfg.relative_max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, heads, q, k)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.num_heads * cfg.head_dim
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=False)
        self.out = nn.Linear(inner, cfg.d_model, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(self, x, mask, context=None, cached_kv=None):
        q = self.split_heads(self.q(x))
        k, v = cached_kv if cached_kv is not None else self.keys_values(x if context is None else context)
        # Plain matmul attention: for these short sequences it beats the fused CPU kernels,
        # whose backward pass with an additive bias is slow.
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + mask
        y = scores.softmax(-1).to(v.dtype) @ v
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Sequential):
    def __init__(self, cfg: ModelConfig):
        # Dropout sits on the residual branches only: masks for the 1024-wide hidden layer
        # (and for attention probabilities) cost more than the matmuls on a CPU.
        super().__init__(nn.Linear(cfg.d_model, cfg.d_ff, bias=False), nn.ReLU(), nn.Linear(cfg.d_ff, cfg.d_model, bias=False))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.ff = nn.RMSNorm(cfg.d_model), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.self_attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.cross_attn = nn.RMSNorm(cfg.d_model), Attention(cfg)
        self.norm3, self.ff = nn.RMSNorm(cfg.d_model), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, self_mask, cross_mask, memory_kv):
        x = x + self.drop(self.self_attn(self.norm1(x), self_mask))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_mask, cached_kv=memory_kv))
        return x + self.drop(self.ff(self.norm3(x)))


class TigerModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, id_length: int, codebook_size: int):
        super().__init__()
        self.cfg, self.id_length, self.codebook_size = cfg, id_length, codebook_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder_bias = RelativeBias(cfg, bidirectional=True)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.RMSNorm(cfg.d_model)
        self.decoder_bias = RelativeBias(cfg, bidirectional=False)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.RMSNorm(cfg.d_model)
        # One output matrix per ID position: (position, code, d_model).
        self.head = nn.Parameter(torch.empty(id_length, codebook_size, cfg.d_model))
        self.apply(self._init)
        nn.init.normal_(self.head, std=cfg.d_model**-0.5)

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
        """Additive mask (B, 1, 1, T): -inf on padding keys."""
        mask = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        return mask.masked_fill(tokens == PAD, float("-inf"))[:, None, None, :]

    def encode(self, tokens: torch.Tensor):
        """Encode (B, T) input tokens; returns per-layer cross-attention keys/values and their mask."""
        mask = self.padding_mask(tokens)
        x = self.drop(self.embed(tokens))
        self_mask = self.encoder_bias(tokens.shape[1], tokens.shape[1], tokens.device) + mask
        for layer in self.encoder_layers:
            x = layer(x, self_mask)
        memory = self.drop(self.encoder_norm(x))
        # Keys/values for every decoder layer, computed once per input (beam search reuses them).
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers], mask

    def decode(self, decoder_tokens: torch.Tensor, memory_kv, memory_mask) -> torch.Tensor:
        """Logits (B, P, codebook_size) for the codes at positions 0..P-1 given BOS + P-1 codes."""
        length = decoder_tokens.shape[1]
        causal = torch.full((length, length), float("-inf"), device=decoder_tokens.device).triu(1)
        self_mask = self.decoder_bias(length, length, decoder_tokens.device) + causal
        x = self.drop(self.embed(decoder_tokens))
        for layer, kv in zip(self.decoder_layers, memory_kv):
            x = layer(x, self_mask, memory_mask, kv)
        x = self.drop(self.decoder_norm(x))
        # Rescale as T5 does with tied embeddings, keeping logits well scaled at init.
        return torch.einsum("bpd,pkd->bpk", x * self.cfg.d_model**-0.5, self.head[:length].to(x.dtype))

    def forward(self, tokens: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        memory_kv, memory_mask = self.encode(tokens)
        return self.decode(decoder_tokens, memory_kv, memory_mask)

    def loss(self, tokens: torch.Tensor, target_codes: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        logits = self(tokens, decoder_tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), target_codes.flatten())
