"""Typed configuration for every stage of the pipeline.

Defaults are the paper's values (Rajput et al. 2023, see TIGER_SPEC.md) unless a
comment says otherwise. A config loads from YAML or TOML and takes dotted
command-line overrides such as ``train.steps=20000``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


@dataclass
class DataConfig:
    max_history: int = 20  # most recent items fed to the model
    min_interactions: int = 3  # a user needs train + valid + test items


@dataclass
class TextConfig:
    # "auto" = offline all-mpnet-base-v2 (768-d) if installed, else all-MiniLM-L6-v2.
    # Any sentence-transformers name (e.g. sentence-transformers/sentence-t5-base,
    # the paper's encoder) or local folder works too.
    encoder: str = "auto"
    template: str = "{title}. Price: {price}. Brand: {brand}. Categories: {categories}."
    batch_size: int = 128
    # Optional ``KEY TEXT`` lines (KEY = item id or ASIN) giving a title to items that have none.
    titles_file: str = ""


@dataclass
class IDsConfig:
    scheme: str = "rqvae"  # rqvae | rqkmeans | lsh | random
    levels: int = 3
    codebook_size: int = 256
    code_dim: int = 32
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    beta: float = 0.25  # commitment weight
    # Adagrad. The paper's 0.4 diverges here (reconstruction ~1e3-1e8, one code
    # per level), with PyTorch's and with TensorFlow's (0.1) initial accumulator,
    # raw or standardised inputs; 0.01 trains stably (benchmarks/ids_beauty.py).
    lr: float = 0.01
    # Scale inputs to zero mean, unit variance per dimension (statistics saved with
    # the model). Unit-norm sentence embeddings have per-dimension variance ~1/768,
    # so raw, the decoder barely learns (reconstruction stays at the data variance).
    standardize: bool = True
    batch_size: int = 1024
    # The paper trains 20k epochs; here codes stop improving after ~200 (~80 s on 1 CPU thread).
    epochs: int = 200
    bf16: str = "auto"  # auto | on | off: bf16 autocast for the MLPs; distances and argmin stay fp32
    # Re-seed codewords no item chose in an epoch with random residuals of the last
    # batch. Not in the paper, but without it the first level collapses to ~10% use
    # as the encoder drifts away from the k-means-initialised codebook.
    dead_code_reset: bool = True
    eval_every: int = 0  # epochs between metric rows in history; 0 = epochs // 20
    seed: int = 0


@dataclass
class ModelConfig:
    d_model: int = 128
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000
    use_user_token: bool = True
    # How the encoder sees the history. "codes" (the paper): every item as its 4 code
    # tokens, a bidirectional encoder, one training target per example. "items": every
    # item as one token (the mean of its code embeddings), a causal encoder, and every
    # position of a user's sequence is a target in one pass (4x shorter inputs, ~10x
    # fewer encoder passes per target). "causal-codes": the paper's tokens under a causal
    # encoder, every position a target. The decoder is the paper's in every case.
    history: str = "codes"
    # Initial std of the token embeddings: T5's 1.0 suits Adafactor, whose steps scale with
    # each parameter's size; AdamW's absolute steps move such embeddings slowly.
    embed_init_std: float = 1.0
    relative_buckets: int = 32  # T5 relative position bias
    relative_max_distance: int = 128


@dataclass
class TrainConfig:
    steps: int = 200_000  # paper: 200k Beauty/Sports, 100k Toys
    # Not in the paper: a budget in passes over the training data (any dataset size);
    # when > 0 it replaces ``steps``.
    epochs: float = 0.0
    batch_size: int = 256  # examples; with model.history=items, user sequences (each holds several targets)
    lr: float = 0.01
    # "rsqrt" (the paper, T5X): constant lr for ``warmup_steps``, then 1/sqrt(step).
    # Not in the paper: "constant", "linear" and "cosine" warm up linearly from 0 over
    # ``warmup_steps`` and then stay constant, or decay to 0 at the end of the budget
    # (``steps``, or ``max_minutes`` when that ends first).
    schedule: str = "rsqrt"
    warmup_steps: int = 10_000
    # Not in the paper: decay the lr linearly to 0 over this last share of the budget
    # (steps, or max_minutes when that ends first). 0 = the paper's schedule alone.
    cooldown_fraction: float = 0.0
    optimizer: str = "adafactor"  # adafactor | adamw
    weight_decay: float = 0.0
    eval_every: int = 5_000  # steps between validations; 0 = every ``eval_every_minutes`` instead
    eval_every_minutes: float = 0.0  # wall-clock minutes between validations (with eval_every = 0; both 0 = at the end)
    patience: int = 0  # evaluations without improvement before stopping; 0 = never
    valid_users: int = 0  # validation on a fixed random subset of users; 0 = all
    checkpoint_every: int = 1_000
    log_every: int = 100
    bf16: str = "auto"  # auto | on | off
    seed: int = 0
    max_minutes: float = 0.0  # wall-clock budget for training; 0 = none


@dataclass
class EvalConfig:
    beam_size: int = 20
    top_k: int = 10
    batch_size: int = 512


@dataclass
class SASRecConfig:
    """SASRec baseline (Kang & McAuley 2018) trained with full-catalogue cross-entropy.

    Sizes follow the original paper (2 blocks, 1 head, dropout 0.5 on the sparse
    Amazon data, max length 50, Adam 1e-3, batch 128), with 64 hidden units as in
    most re-implementations (the original used 50).
    """

    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_len: int = 50
    lr: float = 0.001
    batch_size: int = 128
    steps: int = 20_000
    max_minutes: float = 0.0  # wall-clock budget; 0 = none
    eval_every: int = 1_000  # steps between validation runs (best checkpoint by NDCG@10)
    bf16: str = "auto"
    seed: int = 0


@dataclass
class ExperimentConfig:
    """Settings of ``tigerrec experiment`` (the paper's further experiments)."""

    unseen_share: float = 0.05  # cold start: share of the distinct test targets held out as unseen
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.4, 1.0])
    temperatures: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0])
    category_level: int = 2  # diversity: depth in the item's first category path (1 = root); 0 = deepest
    schemes: list[str] = field(default_factory=lambda: ["random", "lsh", "rqkmeans", "rqvae"])
    user_token_ablation: bool = True  # ablation: also train rqvae without the user token
    seed: int = 0


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    ids: IDsConfig = field(default_factory=IDsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return _build(cls, values, "")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_config_file(path))

    def override(self, assignments: list[str]) -> "RunConfig":
        """Apply ``section.key=value`` strings; values are parsed as YAML scalars."""
        values = self.to_dict()
        for assignment in assignments:
            if "=" not in assignment:
                raise ValueError(f"override {assignment!r} must look like section.key=value")
            key, raw = assignment.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) != 2 or parts[0] not in values:
                raise ValueError(f"unknown config key {key!r}; sections are {sorted(values)}")
            section, name = parts
            if name not in values[section]:
                raise ValueError(f"unknown config key {key!r}; {section} has {sorted(values[section])}")
            values[section][name] = yaml.safe_load(raw)
        return RunConfig.from_dict(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text) or {}
    if path.suffix == ".json":
        return json.loads(text)
    raise ValueError(f"config file {path} must end in .yaml, .yml, .toml or .json")


def _build(cls, values: dict[str, Any], where: str):
    """Build dataclass ``cls`` from a nested dict, checking names and types."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in {where or '<root>'}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, label)
        else:
            kwargs[name] = _coerce(hint, value, label)
    return cls(**kwargs)


def _coerce(hint, value, label):
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config {label} must be true or false, got {value!r}")
    if hint in (int, float, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is float and isinstance(value, str):
            try:  # YAML reads 2e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, hint) and not isinstance(value, bool):
            return value
        raise ValueError(f"config {label} must be {hint.__name__}, got {value!r}")
    if getattr(hint, "__origin__", None) is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {label} must be a list, got {value!r}")
        return [_coerce(hint.__args__[0], v, label) for v in value]
    return value
