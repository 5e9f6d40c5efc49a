"""Model kinds by name (``model.kind``), and building a model and its tokenizer from a config.

A kind is a ``model.SequenceModel`` subclass registered here under its ``kind``, beside the settings it
works with (``config.MODEL_KINDS``, which ``RunConfig.validate`` checks). Everything else asks the
model (``rank``, ``catalogue_trie``, ...) or its ``ModelKind``, never the kind's name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import MODEL_KINDS, ModelKind, RunConfig
from .errors import TigerrecError
from .model import SequenceModel, TigerModel
from .quantize import load_quantizer
from .rpg import RPGModel
from .rundir import QUANTIZER_FILE
from .semantic_ids import SemanticIDs
from .sequences import Tokenizer

MODELS: dict[str, type[SequenceModel]] = {}


def register(model_class: type[SequenceModel], kind: ModelKind | None = None) -> type[SequenceModel]:
    """Make ``model_class`` the class of ``model.kind=<model_class.kind>``; ``kind`` adds the settings it
    works with (the built-in kinds' are in ``config.MODEL_KINDS`` already)."""
    if kind is not None:
        if kind.name != model_class.kind:
            raise ValueError(f"{model_class.__name__}.kind is {model_class.kind!r}, its settings are {kind.name!r}")
        MODEL_KINDS[kind.name] = kind
    if model_class.kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={model_class.kind!r} has no settings in config.MODEL_KINDS")
    MODELS[model_class.kind] = model_class
    return model_class


register(TigerModel)
register(RPGModel)


def model_class(kind: str) -> type[SequenceModel]:
    """The class registered for ``model.kind=kind``."""
    if kind not in MODELS:
        raise TigerrecError(f"unknown model.kind {kind!r}; registered: {', '.join(MODELS)}")
    return MODELS[kind]


def make_tokenizer(ids: SemanticIDs, cfg: RunConfig) -> Tokenizer:
    """The tokenizer for ``ids`` as ``cfg`` reads them (items added after training need no new tokens)."""
    return Tokenizer(
        ids.codes,
        ids.codebook_size,
        cfg.model.user_buckets,
        cfg.data.max_history,
        cfg.model.use_user_token,
        history=cfg.model.history,
        anonymous_token=cfg.model.anonymous_share > 0,
    )


def make_model(tokenizer: Tokenizer, cfg: RunConfig) -> SequenceModel:
    """A model of kind ``model.kind`` sized for ``tokenizer``'s vocabulary and IDs, for weights loaded next."""
    return model_class(cfg.model.kind).build(tokenizer, cfg)


def initial_model(tokenizer: Tokenizer, cfg: RunConfig, ids_dir: str | Path | None = None) -> SequenceModel:
    """A model as training starts it: initialised from ``train.seed`` (same seed, same weights), its code
    embeddings from the quantiser's codewords in ``ids_dir`` with model.embed_init=codebooks."""
    codebooks = None
    if cfg.model.embed_init == "codebooks":
        if ids_dir is None:
            raise TigerrecError(
                "config model.embed_init=codebooks needs the Semantic IDs' quantiser: pass ids_dir to prepare"
            )
        codebooks = load_quantizer(Path(ids_dir) / QUANTIZER_FILE).codebooks
    torch.manual_seed(cfg.train.seed)
    return model_class(cfg.model.kind).build(tokenizer, cfg, codebooks)
