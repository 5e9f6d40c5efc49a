"""Building a model from a config: the tokenizer for its Semantic IDs and a freshly initialised model."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import CODEBOOK_INITS, RunConfig
from .errors import TigerrecError
from .model import SequenceModel, TigerModel
from .quantize import load_quantizer
from .rpg import RPGModel
from .rundir import QUANTIZER_FILE
from .semantic_ids import SemanticIDs
from .sequences import Tokenizer


def make_tokenizer(ids: SemanticIDs, cfg: RunConfig, trained_items: int | None = None) -> Tokenizer:
    """The tokenizer for ``ids``; with ``model.item_tokens`` the first ``trained_items`` items (default:
    all) have a token of their own, so IDs added after training leave the vocabulary as it was."""
    item_tokens = (len(ids.item_ids) if trained_items is None else trained_items) if cfg.model.item_tokens else 0
    return Tokenizer(
        ids.codes,
        ids.codebook_size,
        cfg.model.user_buckets,
        cfg.data.max_history,
        cfg.model.use_user_token,
        history=cfg.model.history,
        item_tokens=item_tokens,
        anonymous_token=cfg.model.anonymous_share > 0,
    )


def make_model(tokenizer: Tokenizer, cfg: RunConfig) -> SequenceModel:
    """A freshly initialised sequence model of kind ``model.kind`` sized for ``tokenizer``'s vocabulary and
    IDs (RPG also keeps the IDs of every item, the catalogue it scores)."""
    if cfg.model.kind == "rpg":
        return RPGModel(cfg.model, tokenizer.vocab_size, tokenizer.item_codes, tokenizer.codebook_size)
    return TigerModel(cfg.model, tokenizer.vocab_size, tokenizer.id_length, tokenizer.codebook_size)


def initial_model(tokenizer: Tokenizer, cfg: RunConfig, ids_dir: str | Path | None = None) -> SequenceModel:
    """A model as training starts it: initialised from ``train.seed`` (same seed, same weights), its code
    embeddings from the quantiser's codewords in ``ids_dir`` with model.embed_init=codebooks."""
    torch.manual_seed(cfg.train.seed)
    model = make_model(tokenizer, cfg)
    if cfg.model.embed_init in CODEBOOK_INITS:
        if ids_dir is None:
            raise TigerrecError(
                f"config model.embed_init={cfg.model.embed_init} needs the Semantic IDs' quantiser: "
                "pass ids_dir to prepare"
            )
        init_code_embeddings(
            model,
            tokenizer,
            load_quantizer(Path(ids_dir) / QUANTIZER_FILE).codebooks,
            cfg.model.embed_init_std,
            head=cfg.model.embed_init == "codebooks+head",
        )
    return model


def init_code_embeddings(
    model: TigerModel, tokenizer: Tokenizer, codebooks: torch.Tensor, std: float, head: bool = False
) -> None:
    """Start each level's code tokens from the quantiser's codewords (levels, codebook_size, dim): centred,
    carried to d_model by one fixed random projection per level and scaled to ``std``, so the geometry
    of the codewords (which codes are close) is what the model starts from (ModelConfig.embed_init).
    With ``head`` the output rows of those codes start from the same vectors at the head's usual scale,
    as if input and output embeddings were tied."""
    generator = torch.Generator().manual_seed(0)
    d_model = model.embed.weight.shape[1]
    with torch.no_grad():
        for level, codewords in enumerate(codebooks.float().cpu()):
            projected = (codewords - codewords.mean(0)) @ torch.randn(codewords.shape[1], d_model, generator=generator)
            projected = projected / projected.std()
            rows = tokenizer.code_tokens(level).to(model.embed.weight.device)
            model.embed.weight[rows] = (projected * std).to(model.embed.weight)
            if head:
                model.head[level] = (projected * d_model**-0.5).to(model.head)
