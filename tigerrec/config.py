"""Typed configuration for every stage of the pipeline.

Defaults are the paper's values (Rajput et al. 2023, see TIGER_SPEC.md) unless a
comment says otherwise. A config loads from YAML or TOML and takes dotted
command-line overrides such as ``train.steps=20000``. ``RunConfig.validate`` checks
every value before any work starts; ``RESUMABLE_KEYS`` lists the settings a run
directory may be resumed with other values of.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import TigerrecError, brief


@dataclass
class DataConfig:
    max_history: int = 20  # most recent items fed to the model
    min_interactions: int = 3  # a user needs train + valid + test items
    # Not in the paper: leave out each user's last N items before the split, so validation and test
    # move N steps back in time (1: "test" is the real validation item; the real test is never read).
    # For checking, on validation data only, whether a recipe's gain carries forward in time.
    backtest: int = 0


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
    # Optional precomputed item vectors keyed by item id (.npz or .parquet, text.read_item_vectors):
    # the Semantic IDs are fitted on them and the encoder is not run.
    embeddings_file: str = ""


@dataclass
class IDsConfig:
    # rqvae | rqkmeans | lsh | random: ordered codes plus a collision code (TIGER). opq: ``levels``
    # unordered codes and no collision code (RPG, model.kind=rpg; items may share an ID).
    scheme: str = "rqvae"
    levels: int = 3  # codes per item from the quantiser (opq: the number of subspaces, RPG's ID length)
    codebook_size: int = 256
    code_dim: int = 32
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    beta: float = 0.25  # commitment weight
    # Adagrad. The paper's 0.4 diverges here whatever the initial accumulator or input
    # scaling; 0.01 trains stably (benchmarks/ids_beauty.py; BENCHMARKS.md, "Semantic IDs on
    # Amazon Beauty").
    lr: float = 0.01
    # Scale inputs to zero mean, unit variance per dimension (statistics saved with
    # the model). Unit-norm sentence embeddings have a tiny variance per dimension,
    # so raw, the decoder barely learns.
    standardize: bool = True
    batch_size: int = 1024
    # The paper trains 20k epochs; here the codes stop improving long before.
    epochs: int = 200
    bf16: str = "auto"  # auto | on | off: bf16 autocast for the MLPs; distances and argmin stay fp32
    # Re-seed codewords no item chose in an epoch with random residuals of the last
    # batch. Not in the paper, but without it the first level collapses to a few codes
    # as the encoder drifts away from the k-means-initialised codebook.
    dead_code_reset: bool = True
    eval_every: int = 0  # epochs between metric rows in history; 0 = epochs // 20
    # opq only: first project the embeddings onto this many principal components, whitened
    # (the RPG paper: 128); 0 = the embeddings as they are.
    pca_dim: int = 0
    # rqkmeans only: fit each level's k-means on this many items drawn at random (seeded), then assign
    # every item, when the catalogue is larger; 0 = fit on all items. Amazon-sized catalogues (12k-60k
    # items) are below it and fit on all.
    kmeans_sample: int = 100_000
    seed: int = 0


@dataclass
class ModelConfig:
    # "tiger": the encoder-decoder below, generating an ID code by code (Rajput et al. 2023).
    # "rpg": a causal Transformer predicting all codes of a long unordered ID at once, every item
    # scored exactly (Hou et al. 2025, tigerrec/rpg.py); needs ids.scheme=opq and history=items
    # (``--model rpg`` sets both and RPG's other defaults, presets.MODELS).
    kind: str = "tiger"
    d_model: int = 128
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 1024
    encoder_layers: int = 4  # rpg: its Transformer's layers
    decoder_layers: int = 4  # tiger only
    dropout: float = 0.1  # on the residual branches (and, for tiger, the decoder input and both stacks' outputs)
    # Dropout on the encoder's input vectors (history tokens, user token). T5 and the TIGER paper:
    # 0.1, as everywhere else; the RPG paper: 0.5, with 0 on the residual branches.
    input_dropout: float = 0.1
    attention_dropout: float = 0.0  # on the attention weights (the RPG paper: 0.5; T5: 0.1)
    user_buckets: int = 2000
    use_user_token: bool = True
    # How the encoder sees the history. "codes" (the paper): every item as its 4 code
    # tokens, a bidirectional encoder, one training target per example. "pooled": every
    # item as one token (the mean of its code embeddings), otherwise the paper's: 4x
    # shorter encoder inputs (the tuned recipe). "items": pooled tokens under a causal encoder,
    # and every position of a user's sequence is a target in one pass (RPG's; TIGER's decoder
    # reads it too). The decoder is the paper's in every case.
    history: str = "codes"
    # Not in the paper: the share of training examples whose user token is replaced by a
    # reserved "unknown user" token, the one requests without a user id then get. With 0
    # there is no such token and those requests have no user token at all (masked out).
    anonymous_share: float = 0.0
    # Initial std of the token embeddings: T5's 1.0 suits Adafactor, whose steps scale with
    # each parameter's size; AdamW's absolute steps move such embeddings slowly.
    embed_init_std: float = 1.0
    # Not in the paper: "codebooks" starts each code token's embedding from its quantiser
    # codeword (ids.scheme rqvae or rqkmeans), carried to d_model by a fixed random projection
    # at embed_init_std, so codes that are close in the quantiser start close; collision codes,
    # user and special tokens stay "normal" (random at embed_init_std). The tuned recipe's.
    embed_init: str = "normal"
    relative_buckets: int = 32  # T5 relative position bias
    relative_max_distance: int = 128
    # rpg only: logits are the cosine similarity of a head's output and each code's embedding,
    # divided by this temperature (the RPG paper's training scripts, on all three datasets).
    logit_temperature: float = 0.03


# How the encoder reads the history (ModelConfig.history).
HISTORIES = ("codes", "items", "pooled")
CAUSAL_HISTORIES = ("items",)  # every position of a sequence a target, in one pass
POOLED_HISTORIES = ("items", "pooled")  # one encoder token per history item


@dataclass(frozen=True)
class ModelKind:
    """What ``RunConfig.validate`` needs to know of a model kind (model.kind): the settings it works with.
    Its class, which builds, trains and ranks, is registered under the same name (``registry.register``)."""

    name: str
    id_schemes: tuple[str, ...]  # the ids.scheme values it reads
    ids: str  # what those IDs are like, for error messages
    histories: tuple[str, ...]  # the model.history values it reads
    ranking: str  # how it ranks the catalogue, for messages and reports
    decodings: tuple[str, ...] = ("exact",)  # the eval.decoding values it takes
    ensembles: bool = False  # train.members > 1 ranks several of its models as one
    codeword_init: bool = False  # model.embed_init=codebooks starts its code embeddings from the codewords


MODEL_KINDS: dict[str, ModelKind] = {
    "tiger": ModelKind(
        "tiger",
        id_schemes=("rqvae", "rqkmeans", "lsh", "random"),
        ids="ordered codes made unique by a collision code",
        histories=("codes", "items", "pooled"),
        ranking="constrained beam search",
        ensembles=True,
        codeword_init=True,
    ),
    "rpg": ModelKind(
        "rpg",
        id_schemes=("opq",),
        ids="long unordered IDs",
        histories=("items",),
        ranking="every item scored exactly",
        decodings=("exact", "graph"),
    ),
}


SCHEDULES = ("rsqrt", "constant")  # TrainConfig.schedule, as train.lr_factor reads it


@dataclass
class TrainConfig:
    steps: int = 200_000  # paper: 200k Beauty/Sports, 100k Toys
    # Not in the paper: a cap in passes over the training data (any dataset size); when > 0,
    # training ends after this many passes or ``steps``, whichever comes first. 0 = no cap.
    epochs: float = 0.0
    batch_size: int = 256  # examples; with model.history=items, user sequences (each holds several targets)
    lr: float = 0.01
    # "rsqrt" (the paper, T5X): constant lr for ``warmup_steps``, then 1/sqrt(step).
    # "constant" (RPG's): a linear warmup from 0 over ``warmup_steps``, then constant.
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
    # Not in the paper: train this many models, one after the other from seeds seed, seed + 1, ..., and
    # rank with all of them as one ensemble (model.TigerEnsemble: the mean of their log-probabilities
    # at every decoding step). Under max_minutes a member trains on the minutes the ones before it
    # left (its schedule compressed into them), and only if they are at least member_min_share of the
    # first one's training time (members.train_members). 1 = one model; kinds whose ModelKind.ensembles.
    members: int = 1
    member_min_share: float = 0.5
    max_minutes: float = 0.0  # wall-clock budget for training; 0 = none
    # Not in the paper: a wall-clock budget for the whole of ``tigerrec run`` (loading, Semantic IDs,
    # training, final evaluation). Training then stops early enough for the run to end within it:
    # ``max_minutes`` becomes what loading and the IDs leave, less a forecast of the final
    # evaluation (at most ``max_minutes`` when that is set too). 0 = none.
    budget_minutes: float = 0.0


@dataclass
class EvalConfig:
    beam_size: int = 20  # TIGER's beams; RPG's graph decoding keeps as many items per step
    top_k: int = 10
    batch_size: int = 512
    # The final validation and test on a fixed random sample of this many users (0 = all): for catalogues
    # with millions of users, where decoding every one would take hours.
    users: int = 0
    # Keep each user's own history items out of the ranking (all of them, not only the last max_history
    # that the model reads), as serving (exclude_seen) and the baselines do.
    # Off in the paper's protocol; on the P5 Amazon data no target is already in its user's history.
    exclude_history: bool = False
    # rpg only: "exact" scores every item of the catalogue; "graph" is the RPG paper's graph-constrained
    # decoding, which scores only the neighbours of its beam in a graph of items with similar IDs
    # (for catalogues too large to score exactly; benchmarks/rpg_decoding.py measures its recall).
    decoding: str = "exact"
    graph_neighbors: int = 50  # edges per item
    graph_steps: int = 3  # propagation steps from a random beam
    # New items (``add-items``) in ``reserve_new`` slots are ranked by the guided rule (``new_items``): the
    # model's best ``new_item_guides`` items pull the user's content profile this far. 0.25 is the pull the
    # cold-start study chose on validation (docs/studies/2026-11-30-cold-start.md).
    new_item_pull: float = 0.25
    new_item_guides: int = 5


@dataclass
class SASRecConfig:
    """SASRec baseline (Kang & McAuley 2018), trained to convergence.

    The original's sizes (2 blocks, 1 head, dropout 0.5 on the sparse Amazon data, max length 50,
    Adam 1e-3, batch 128) with 64 hidden units and a softmax over the full catalogue. On Beauty
    validation these beat the eSASRec benchmark's SASRec+SS settings (1 block, dropout 0.2, 256
    sampled negatives) and the same block with the full softmax: see BENCHMARKS.md, "Baselines".
    ``negatives`` > 0 trains with that many uniform negatives per sequence (a sampled softmax)
    instead. Training validates after every epoch, keeps the best checkpoint, and stops after
    ``patience`` epochs without a new best (no gap between bests on the Beauty curves exceeded it).
    """

    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_len: int = 50
    lr: float = 0.001
    weight_decay: float = 0.0  # AdamW's decoupled decay; 0 is plain Adam
    batch_size: int = 128
    negatives: int = 0  # uniform negatives per training sequence (sampled softmax); 0 = full catalogue
    epochs: int = 200
    patience: int = 20  # epochs without a better validation score before stopping; 0 = never
    max_minutes: float = 0.0  # an explicit wall-clock cap; 0 = none (train to convergence)
    bf16: str = "auto"
    seed: int = 0


@dataclass
class FusionConfig:
    """An item-ID model trained in the run beside the generative one, whose scores re-rank the generative
    model's beam (``fusion``): the generative model proposes, both score, Semantic IDs stay the items'
    representation. The item model is ``sasrec``'s SASRec, trained after the generative model on the same
    split and picked by the same validation metric. ``weight`` and ``floor`` were chosen on Beauty
    validation (docs/studies/2026-12-07-fusion.md)."""

    item_model: str = "none"  # "sasrec", or "none": the generative model's ranking alone
    weight: float = 1.5  # of the generative log-probability against the item model's log-softmax
    floor: float = 1.0  # an item outside the beam scores this far below the beam's last log-probability


@dataclass
class ExperimentConfig:
    """Settings of ``tigerrec experiment`` (the paper's further experiments)."""

    unseen_share: float = 0.05  # cold start: share of the distinct test targets held out as unseen
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.4, 1.0])
    # cold start, guided rule: the pulls to choose from on validation (eval.new_item_pull is the served one)
    guide_pulls: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
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
    fusion: FusionConfig = field(default_factory=FusionConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        return _build(cls, values, "")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_config_file(path))

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply ``section.key=value`` strings; values are parsed as YAML scalars."""
        values = self.to_dict()
        for assignment in assignments:
            if "=" not in assignment:
                raise TigerrecError(f"override {assignment!r} must look like section.key=value")
            key, raw = assignment.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) != 2 or parts[0] not in values:
                raise TigerrecError(f"unknown config key {key!r}; sections are {sorted(values)}")
            section, name = parts
            if name not in values[section]:
                raise TigerrecError(f"unknown config key {key!r}; {section} has {sorted(values[section])}")
            try:
                values[section][name] = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise TigerrecError(f"override {assignment!r}: the value is not valid YAML ({brief(e)})") from None
        return RunConfig.from_dict(values)

    def validate(self) -> RunConfig:
        """Check every value (TigerrecError naming the key, the value and what is allowed); returns self."""
        values = self.to_dict()
        for key, (allowed, requirement) in _rules().items():
            section, name = key.split(".")
            value = values[section][name]
            try:
                ok = allowed(value)
            except TypeError:  # a value of the wrong type, set in Python (files and --set are type-checked)
                ok = False
            if not ok:
                raise TigerrecError(f"config {key} must be {requirement}, got {show_value(value)}")
        # Rules between keys.
        if self.train.schedule == "rsqrt" and self.train.warmup_steps < 1:  # lr * sqrt(warmup_steps / step)
            raise TigerrecError(
                f"config train.warmup_steps must be >= 1 with train.schedule=rsqrt, got {self.train.warmup_steps}"
            )
        if self.eval.top_k > self.eval.beam_size:  # the top_k results are the best of beam_size beams
            raise TigerrecError(
                f"config eval.top_k must be <= eval.beam_size ({self.eval.beam_size}), got {self.eval.top_k}"
            )
        # T5's buckets: half per direction, half of those exact, the rest log-spaced up to max_distance.
        if self.model.relative_max_distance <= self.model.relative_buckets // 2:
            raise TigerrecError(
                f"config model.relative_max_distance must be > model.relative_buckets // 2 "
                f"({self.model.relative_buckets // 2}), got {self.model.relative_max_distance}"
            )
        # lsh: one code = log2(size) sign bits; opq: faiss quantises each subspace to log2(size) bits.
        if self.ids.scheme in ("lsh", "opq") and self.ids.codebook_size & (self.ids.codebook_size - 1):
            raise TigerrecError(
                f"config ids.codebook_size must be a power of two with ids.scheme={self.ids.scheme}, "
                f"got {self.ids.codebook_size}"
            )
        if self.ids.pca_dim and self.ids.scheme != "opq":
            raise TigerrecError(
                f"config ids.pca_dim={self.ids.pca_dim} applies to ids.scheme=opq only, "
                f"got ids.scheme={self.ids.scheme}; set ids.pca_dim=0"
            )
        self._check_model_kind()
        if self.sasrec.hidden % self.sasrec.heads:
            raise TigerrecError(
                f"config sasrec.hidden must be a multiple of sasrec.heads ({self.sasrec.heads}), "
                f"got {self.sasrec.hidden}"
            )
        return self

    def _check_model_kind(self) -> None:
        """The settings model.kind works with (its ``ModelKind`` in ``MODEL_KINDS``)."""
        model, ids = self.model, self.ids
        kind = MODEL_KINDS[model.kind]
        hint = f'; pass --model {kind.name} (Python: presets.recipe_config(model="{kind.name}")) for its settings'
        if ids.scheme not in kind.id_schemes:
            raise TigerrecError(
                f"config model.kind={kind.name} needs {_setting('ids.scheme', kind.id_schemes)} ({kind.ids}), "
                f"got ids.scheme={ids.scheme}{hint}"
            )
        if model.history not in kind.histories:
            raise TigerrecError(
                f"config model.kind={kind.name} needs {_setting('model.history', kind.histories)}, "
                f"got model.history={model.history}{hint}"
            )
        if self.eval.decoding not in kind.decodings:
            raise TigerrecError(
                f"config eval.decoding={self.eval.decoding} is not for model.kind={kind.name}, which ranks by "
                f"{kind.ranking}; it takes {_setting('eval.decoding', kind.decodings)}"
            )
        starts_from_codewords = [name for name, k in MODEL_KINDS.items() if k.codeword_init]
        if model.embed_init == "codebooks" and (not kind.codeword_init or ids.scheme not in CODEWORD_SCHEMES):
            raise TigerrecError(
                f"config model.embed_init={model.embed_init} needs {_setting('model.kind', starts_from_codewords)} "
                f"and {_setting('ids.scheme', CODEWORD_SCHEMES)} (codewords per level), got model.kind={model.kind}, "
                f"ids.scheme={ids.scheme}; set model.embed_init=normal (the tuned recipe sets codebooks)"
            )
        if self.train.members > 1 and not kind.ensembles:
            ensembles = [name for name, k in MODEL_KINDS.items() if k.ensembles]
            raise TigerrecError(
                f"config train.members={self.train.members} (an ensemble) needs {_setting('model.kind', ensembles)}, "
                f"got model.kind={model.kind}"
            )

    def fingerprint(self, *sections: str) -> dict[str, Any]:
        """The settings of ``sections`` that decide what a stage builds (``fingerprint``)."""
        return fingerprint(json.loads(self.to_json()), sections)


# Settings a run directory may be resumed with other values of: they decide how long and how
# often (budgets, validation, logging and checkpoint cadence) or how fast (the text encoder's batch,
# bf16), not what a stage builds, so the config recorded by a resumed run still describes its
# model. Changing any other setting of the sections a stage is built from (text and ids for the
# Semantic IDs; data, model and train for the model) makes ``tigerrec run`` refuse the run
# directory unless --overwrite. valid_users is here although the best checkpoint is chosen on that
# subset: extending a run with a larger validation set is a common, deliberate choice. The eval
# section belongs to no stage: it sets how validation and test decode. members (an ensemble's size)
# is here too: a finished run grows into an ensemble by training only the members it lacks.
RESUMABLE_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"batch_size"}),
    "ids": frozenset({"eval_every"}),
    "train": frozenset(
        {
            "steps",
            "epochs",
            "max_minutes",
            "patience",
            "eval_every",
            "eval_every_minutes",
            "valid_users",
            "checkpoint_every",
            "log_every",
            "bf16",
            "budget_minutes",
            "members",
            "member_min_share",
        }
    ),
}


def fingerprint(values: dict[str, Any], sections) -> dict[str, Any]:
    """``{"section.key": value}`` for the settings of ``sections`` in the config dict ``values`` (as
    JSON holds it), less ``RESUMABLE_KEYS``."""
    flat = {}
    for section in sections:
        settings = values.get(section)
        for name, value in settings.items() if isinstance(settings, dict) else ():
            if name not in RESUMABLE_KEYS.get(section, ()):
                flat[f"{section}.{name}"] = value
    return flat


ID_SCHEMES = ("rqvae", "rqkmeans", "lsh", "random", "opq")  # the quantisers (quantize.make_quantizer)
EMBED_INITS = ("normal", "codebooks")  # ModelConfig.embed_init
CODEWORD_SCHEMES = ("rqvae", "rqkmeans")  # the schemes whose codewords embed_init=codebooks starts from
DECODINGS = ("exact", "graph")  # EvalConfig.decoding
BF16_SETTINGS = ("auto", "on", "off")
ITEM_MODELS = ("none", "sasrec")  # FusionConfig.item_model

Rule = tuple[Callable[[Any], bool], str]  # (is the value allowed?, what is allowed, for the message)


def _at_least(low: float) -> Rule:
    return (lambda v: math.isfinite(v) and v >= low), f">= {low}"


def _above(low: float) -> Rule:
    return (lambda v: math.isfinite(v) and v > low), f"> {low}"


def _within(low: float, high: float, high_open: bool = False) -> Rule:
    if high_open:
        return (lambda v: low <= v < high), f"in [{low}, {high})"
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


def _setting(key: str, values) -> str:
    """``key=value`` for one allowed value, ``key a, b or c`` for several."""
    values = list(values)
    return f"{key}={values[0]}" if len(values) == 1 else f"{key} {', '.join(values[:-1])} or {values[-1]}"


def _one_of(choices) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


def _each(rule: Rule) -> Rule:
    allowed, requirement = rule
    return (lambda v: all(allowed(x) for x in v)), f"a list of values {requirement}"


def _template(template: str) -> bool:
    """Plain ``{name}`` fields only: item_sentence fills each by name and drops the parts whose field is missing."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:  # an unmatched brace
        return False
    return bool(template.strip()) and all(
        name is None or (name.isidentifier() and not spec and not conversion) for _, name, spec, conversion in fields
    )


SEED: Rule = (lambda v: 0 <= v < 2**63), "in [0, 2**63)"
COUNT, POSITIVE = _at_least(1), _above(0)


def _rules() -> dict[str, Rule]:
    """What each key allows (keys between which a rule holds are checked in ``RunConfig.validate``)."""
    return {
        "data.max_history": COUNT,
        "data.min_interactions": _at_least(3),  # leave-one-out needs a training, a validation and a test item
        "data.backtest": _at_least(0),
        "text.encoder": ((lambda v: bool(v.strip())), "a model name or folder"),
        "text.template": (_template, "text with plain {field} names such as {title}"),
        "text.batch_size": COUNT,
        "ids.scheme": _one_of(ID_SCHEMES),
        "ids.levels": COUNT,
        "ids.codebook_size": _at_least(2),
        "ids.code_dim": COUNT,
        "ids.hidden_dims": _each(COUNT),
        "ids.beta": _at_least(0),
        "ids.lr": POSITIVE,
        "ids.batch_size": COUNT,
        "ids.epochs": COUNT,
        "ids.bf16": _one_of(BF16_SETTINGS),
        "ids.eval_every": _at_least(0),
        "ids.pca_dim": _at_least(0),
        "ids.kmeans_sample": _at_least(0),
        "ids.seed": SEED,
        "model.kind": _one_of(MODEL_KINDS),
        **{
            f"model.{name}": COUNT
            for name in (
                "d_model",
                "num_heads",
                "head_dim",
                "d_ff",
                "encoder_layers",
                "decoder_layers",
                "user_buckets",
                "relative_max_distance",
            )
        },
        "model.dropout": _within(0, 1, high_open=True),
        "model.input_dropout": _within(0, 1, high_open=True),
        "model.attention_dropout": _within(0, 1, high_open=True),
        "model.anonymous_share": _within(0, 1),
        "model.history": _one_of(HISTORIES),
        "model.embed_init_std": POSITIVE,
        "model.embed_init": _one_of(EMBED_INITS),
        "model.relative_buckets": _at_least(4),
        "model.logit_temperature": POSITIVE,
        "train.steps": COUNT,
        "train.epochs": _at_least(0),
        "train.batch_size": COUNT,
        "train.lr": POSITIVE,
        "train.schedule": _one_of(SCHEDULES),
        "train.warmup_steps": _at_least(0),
        "train.cooldown_fraction": _within(0, 1),
        "train.optimizer": _one_of(("adafactor", "adamw")),
        "train.weight_decay": _at_least(0),
        "train.eval_every": _at_least(0),
        "train.eval_every_minutes": _at_least(0),
        "train.patience": _at_least(0),
        "train.valid_users": _at_least(0),
        "train.checkpoint_every": COUNT,
        "train.log_every": COUNT,
        "train.bf16": _one_of(BF16_SETTINGS),
        "train.seed": SEED,
        "train.members": COUNT,
        "train.member_min_share": _within(0, 1),
        "train.max_minutes": _at_least(0),
        "train.budget_minutes": _at_least(0),
        "eval.beam_size": COUNT,
        "eval.decoding": _one_of(DECODINGS),
        "eval.graph_neighbors": COUNT,
        "eval.graph_steps": COUNT,
        "eval.top_k": (_at_least(10)[0], ">= 10 (the metrics are Recall and NDCG at 5 and 10)"),
        "eval.batch_size": COUNT,
        "eval.users": _at_least(0),
        "eval.new_item_pull": _within(0, 1),
        "eval.new_item_guides": COUNT,
        **{f"sasrec.{name}": COUNT for name in ("hidden", "blocks", "heads", "max_len", "batch_size", "epochs")},
        "sasrec.negatives": _at_least(0),
        "sasrec.dropout": _within(0, 1, high_open=True),
        "sasrec.lr": POSITIVE,
        "sasrec.weight_decay": _at_least(0),
        "sasrec.patience": _at_least(0),
        "sasrec.max_minutes": _at_least(0),
        "sasrec.bf16": _one_of(BF16_SETTINGS),
        "sasrec.seed": SEED,
        "fusion.item_model": _one_of(ITEM_MODELS),
        "fusion.weight": _at_least(0),
        "fusion.floor": _at_least(0),
        "experiment.unseen_share": ((lambda v: 0 < v <= 1), "in (0, 1]"),
        "experiment.epsilons": _each(_within(0, 1)),
        "experiment.temperatures": _each(POSITIVE),
        "experiment.guide_pulls": _each(_within(0, 1)),
        "experiment.category_level": _at_least(0),
        "experiment.schemes": _each(_one_of(ID_SCHEMES)),  # those of model.kind: run_experiment checks
        "experiment.seed": SEED,
    }


def show_value(value) -> str:
    """A value as it would be written in ``--set`` (true, 0.01, rqvae, [512, 256])."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) and value.strip() else json.dumps(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise TigerrecError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            values = yaml.safe_load(text) or {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise TigerrecError(f"config file {path} cannot be parsed ({brief(e)})") from None
    if not isinstance(values, dict):
        raise TigerrecError(f"config file {path} must hold sections (a mapping), got {type(values).__name__}")
    return values


def _build(cls, values: dict[str, Any], where: str):
    """Build dataclass ``cls`` from a nested dict, checking names and types."""
    if not isinstance(values, dict):
        raise TigerrecError(f"config section {where or '<root>'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise TigerrecError(f"unknown config key(s) {sorted(unknown)} in {where or '<root>'}; known: {sorted(names)}")
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
        raise TigerrecError(f"config {label} must be true or false, got {value!r}")
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
        raise TigerrecError(f"config {label} must be {hint.__name__}, got {value!r}")
    if getattr(hint, "__origin__", None) is list:
        if not isinstance(value, (list, tuple)):
            raise TigerrecError(f"config {label} must be a list, got {value!r}")
        return [_coerce(hint.__args__[0], v, label) for v in value]
    return value
