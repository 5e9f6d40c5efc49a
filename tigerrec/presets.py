"""Named settings: the paper's three benchmarks and a tiny generated dataset for smoke runs."""

from __future__ import annotations

from .config import RunConfig

# Training steps per dataset as in the paper; everything else is the paper default.
PRESETS: dict[str, dict] = {
    "beauty": {"train": {"steps": 200_000}},
    "sports": {"train": {"steps": 200_000}},
    "toys": {"train": {"steps": 100_000}},
    # Generated data, a fast encoder and small budgets in steps: the whole pipeline in well under a minute.
    "tiny": {
        "text": {"encoder": "all-MiniLM-L6-v2"},
        "ids": {"epochs": 150, "codebook_size": 16, "hidden_dims": [128, 64], "code_dim": 16},
        "model": {
            "encoder_layers": 2,
            "decoder_layers": 2,
            "d_ff": 256,
            "num_heads": 4,
            "head_dim": 32,
            "user_buckets": 50,
        },
        "train": {
            "steps": 600,
            "epochs": 0.0,
            "batch_size": 64,
            "warmup_steps": 100,
            "eval_every": 200,
            "checkpoint_every": 200,
            "log_every": 50,
        },
        "eval": {"beam_size": 10, "batch_size": 256},
    },
}

# Training recipes, applied under a preset's own values (benchmarks/recipe_search.py and
# BENCHMARKS.md, "Time to quality", chose them on Beauty validation):
# - "paper": the paper's exact recipe (the config defaults).
# - "tuned" (the default): the paper's model and schedule, decayed linearly to 0 over the last
#   20% of the budget (steps, or --max-minutes), with code embeddings that start from the
#   quantiser's codewords (model.embed_init), residual k-means Semantic IDs (ids.scheme=rqkmeans:
#   more recall than the RQ-VAE's in three runs, in a third of the time), each user's own items kept
#   out of its ranking (eval.exclude_history, as serving does; +15% validation NDCG@10 on Beauty), no
#   user token (as in GRID's TIGER: level or ahead on Beauty validation in all three comparisons; every
#   request is treated alike, with or without a user id), and each history item read as one token, the
#   mean of its code embeddings (model.history=pooled), under the paper's bidirectional encoder: 4x
#   shorter encoder inputs, 3.3x the samples per second on a CPU without bf16 at 12-15% less validation
#   quality per sample; within the same end-to-end budget on that CPU it is 12-19% ahead of the
#   paper's 4 tokens per item on Beauty validation (BENCHMARKS.md, "Pooled history items at the full
#   budget"), and at most 30 passes over the training data (train.epochs; the paper's step count, or
#   --max-minutes, may end it first): on a bf16 CPU the uncapped run reached 88 passes in 110 minutes
#   and its validation was flat from ~29 passes while the training loss kept falling; a 30-pass cap was
#   10% ahead one step forward in time, in 37% of the training time (BENCHMARKS.md, "Many passes on a
#   bf16 CPU"). Held out, the cap gained 10-15% on Toys' test and cost 8-13% on Sports', whose larger
#   training set still gained from 55 passes.
#   At the cap, dropout 0.05 and 0.2 and an item embedding per history item (model.item_tokens) were each
#   behind on Beauty validation data (BENCHMARKS.md, "More levers at the 30-pass cap"): dropout stays 0.1,
#   item tokens off.
#   Two such models (train.members=2, seeds 0 and 1; the second only when the minutes allow it), ranked as one
#   ensemble by the mean of their log-probabilities at each decoding step: on Beauty backtest data,
#   +6-10% on validation and +7-10% one step forward over one model, whose two seeds were within 1.3%
#   of each other (BENCHMARKS.md, "Two models as one ensemble"), at twice the training time and 1.7-2x the
#   decoding time.
#   Two members of 15 passes (one 30-pass model's compute) were 3-8% behind one model of 30 one step forward,
#   so the first member always gets its full length. A second member of 15 passes beside it gained +4-6% one
#   step forward, one of 10 passes +1-3% (within twice the seed spread): so a second member trains where the
#   minutes left give it at least half the first one's time (train.member_min_share=0.5), its schedule
#   compressed into them (BENCHMARKS.md, "How short a second member still helps").
#   `--set model.history=codes` gives the paper's input back; `--set train.epochs=0` removes the cap;
#   `--set train.members=1` trains one model.
RECIPES: dict[str, dict] = {
    "paper": {},
    "tuned": {
        "ids": {"scheme": "rqkmeans"},
        "model": {"use_user_token": False, "embed_init": "codebooks", "history": "pooled"},
        "train": {"cooldown_fraction": 0.2, "epochs": 30.0, "members": 2},
        "eval": {"exclude_history": True},
    },
}
DEFAULT_RECIPE = "tuned"

# Model kinds (`--model`), applied over the recipe and under a preset's own values; MODEL_PRESETS
# then adds a kind's values for one preset. "tiger" is the config defaults.
# "rpg" (Hou et al., KDD 2025; tigerrec/rpg.py), tuned on Beauty validation (BENCHMARKS.md, "Tuning RPG
# on Beauty validation"). As in the paper: OPQ codes of 256 values per item after a whitened 128-d PCA
# of the text embeddings, 2 causal layers of 4 heads, feed-forward 1024, no user token, cosine logits
# at temperature 0.03 (ModelConfig.logit_temperature), dropout 0.5 on the input.
# Not as in the paper:
# - 16 codes on every dataset (the paper: 32 on Beauty, 16 on Toys and Sports): the m output heads
#   cost m * d^2 per position, more than the two layers; 16 codes train 1.6x more samples per second
#   and were ahead on Beauty validation at every point of a 12-minute curve;
# - d_model 256 (paper 448): 448 trains 2.3x fewer samples per second (450 against 1,020 on one CPU
#   thread, 32 codes);
# - dropout 0.1 on the residual branches and none on the attention weights (paper: 0 and 0.5; its
#   0.5 on the attention weights learned 22% slower in 12 minutes);
# - max_history 20, the data section TIGER uses too (paper: 50);
# - Adafactor lr .01, constant after a 200-step warmup, 20% cooldown, 64 sequences a batch, at most
#   100 passes (about an hour on a 2-core CPU) (paper: AdamW, lr .01 on Beauty and .003 on Toys and
#   Sports, batch 256, cosine decay after 10k warmup steps, up to 160 epochs). Adafactor beat AdamW
#   on this CPU's budgets for the item-token TIGER model (BENCHMARKS.md, "Recipe search").
MODELS: dict[str, dict] = {
    "tiger": {},
    "rpg": {
        "ids": {"scheme": "opq", "levels": 16, "codebook_size": 256, "pca_dim": 128},
        "model": {
            "kind": "rpg",
            "history": "items",
            "use_user_token": False,
            "anonymous_share": 0.0,
            "embed_init": "normal",
            "d_model": 256,
            "num_heads": 4,
            "head_dim": 64,
            "d_ff": 1024,
            "encoder_layers": 2,
            "dropout": 0.1,
            "input_dropout": 0.5,
        },
        "train": {
            "optimizer": "adafactor",
            "lr": 0.01,
            "schedule": "constant",
            "warmup_steps": 200,
            "cooldown_fraction": 0.2,
            "batch_size": 64,
            "epochs": 100.0,
            "eval_every": 1000,
            "members": 1,
        },
    },
}
MODEL_PRESETS: dict[tuple[str, str], dict] = {
    # 120 items: 8 codes of 16 values (the preset's codebook), a 64-d PCA (OPQ needs more items than
    # dimensions), a step budget and light dropout: 500 steps must learn it by heart.
    ("rpg", "tiny"): {
        "ids": {"levels": 8, "pca_dim": 64},
        "model": {"d_model": 128, "input_dropout": 0.1},
        "train": {"batch_size": 32, "steps": 500, "warmup_steps": 20, "eval_every": 250, "lr": 0.02},
    },
}


# TIGER, Rajput et al. 2023, Table 1 (TIGER_SPEC.md): dataset -> method -> R@5, N@5, R@10, N@10.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "beauty": {"SASRec": (0.0387, 0.0249, 0.0605, 0.0318), "TIGER": (0.0454, 0.0321, 0.0648, 0.0384)},
    "sports": {"SASRec": (0.0233, 0.0154, 0.0350, 0.0192), "TIGER": (0.0264, 0.0181, 0.0400, 0.0225)},
    "toys": {"SASRec": (0.0463, 0.0306, 0.0675, 0.0374), "TIGER": (0.0521, 0.0371, 0.0712, 0.0432)},
}
# RPG, Hou et al. 2025: NDCG@10 on the same three benchmarks.
RPG_PAPER_NDCG10: dict[str, float] = {"beauty": 0.0464, "sports": 0.0263, "toys": 0.0490}


def paper_table1(dataset_name: str) -> dict[str, tuple[float, float, float, float]]:
    """The paper's rows for a dataset whose name contains one of its benchmarks ("beauty", "amazon-Beauty",
    ...); {} otherwise."""
    name = dataset_name.lower()
    return next((rows for key, rows in PAPER_TABLE1.items() if key in name), {})


# Official Amazon 2014 category names, for the downloader.
AMAZON_CATEGORIES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}


def recipe_config(recipe: str = DEFAULT_RECIPE, preset: str | None = None, model: str = "tiger") -> RunConfig:
    """The config of a training recipe, under a model kind's settings (``MODELS``) and a preset's values
    when one is named. A model kind's own training settings replace the recipe's."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model kind {model!r}; choose one of {sorted(MODELS)}")
    layers = [RECIPES[recipe], MODELS[model], PRESETS.get(preset, {}), MODEL_PRESETS.get((model, preset), {})]
    values: dict = {}
    for layer in layers:
        for section, settings in layer.items():
            values.setdefault(section, {}).update(settings)
    return RunConfig.from_dict(values)


def preset_config(name: str, recipe: str = DEFAULT_RECIPE, model: str = "tiger") -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return recipe_config(recipe, name, model)
