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
        "sasrec": {"epochs": 20, "patience": 5},
    },
}

# Training recipes, applied under a preset's own values; benchmarks/recipe_search.py and the
# backtests in BENCHMARKS.md chose them on Beauty validation data ("Time to quality").
# - "paper": the paper's exact recipe (the config defaults).
# - "tuned" (the default): the paper's model, with what beat it on validation:
#   - a linear lr cooldown over the last 20% of the budget, so a run stopped by steps or by the clock
#     ends annealed ("A longer cooldown, and half the batch");
#   - code embeddings that start from the quantiser's codewords, so close codes start close
#     (model.embed_init; "Code embeddings initialised from the RQ-VAE codewords");
#   - residual k-means Semantic IDs, which recalled more in less time than the RQ-VAE's
#     ("RQ-KMeans Semantic IDs at the full budget");
#   - each user's own items kept out of its ranking, as serving does (eval.exclude_history;
#     "History items kept out of the ranking");
#   - no user token, as in GRID's TIGER: every request is treated alike, with or without a user id
#     ("No user token at the AVX2 budget");
#   - each history item read as one token, the mean of its code embeddings (model.history=pooled):
#     shorter encoder inputs train more samples in the same minutes ("Pooled history items at the
#     full budget");
#   - at most 30 passes over the training data (train.epochs), after which validation stopped
#     improving while the training loss kept falling ("Many passes on a bf16 CPU");
#   - the beam re-ranked by a SASRec trained in the same run (fusion.item_model=sasrec, ``fusion``): the
#     generative model's log-probabilities summed with the item model's, which beat each alone and
#     reciprocal-rank fusion on validation (BENCHMARKS.md, "Frontier"). It takes the place of a second
#     ensemble member (train.members=2, model.TigerEnsemble; "Two models as one ensemble"): both cost
#     more than the 2.5 h a default run may take on a 2-core CPU, and the item model costs a third
#     of a member.
#   Tried at the same budget and kept out: dropout 0.05 and 0.2, item embeddings per history item
#   ("More levers at the 30-pass cap").
#   `--set model.history=codes` gives the paper's input back; `--set train.epochs=0` removes the cap;
#   `--set fusion.item_model=none` ranks by the generative model alone; `--set train.members=2` adds an
#   ensemble member.
RECIPES: dict[str, dict] = {
    "paper": {},
    "tuned": {
        "ids": {"scheme": "rqkmeans"},
        "model": {"use_user_token": False, "embed_init": "codebooks", "history": "pooled"},
        "train": {"cooldown_fraction": 0.2, "epochs": 30.0, "members": 1},
        "eval": {"exclude_history": True},
        "fusion": {"item_model": "sasrec"},
    },
}
DEFAULT_RECIPE = "tuned"

# Model kinds (`--model`), applied over the recipe and under a preset's own values; MODEL_PRESETS
# then adds a kind's values for one preset. "tiger" is the config defaults.
# "rpg" (Hou et al., KDD 2025; tigerrec/rpg.py), tuned on Beauty validation (BENCHMARKS.md, "Tuning RPG
# on Beauty validation"). As in the paper: OPQ codes after a whitened PCA of the text embeddings, two
# causal layers, no user token, cosine logits over a temperature (ModelConfig.logit_temperature), heavy
# dropout on the input. Not as in the paper, for a CPU's budget:
# - 16 codes on every dataset (the paper: 32 on Beauty): the output heads cost as much per position
#   as the layers, and fewer codes train more samples in the same minutes and did better on validation;
# - d_model 256 (the paper: 448), for the same reason;
# - dropout on the residual branches and none on the attention weights (the paper: the reverse, which
#   learned more slowly here);
# - max_history 20, the data section TIGER uses too (the paper: 50);
# - Adafactor with a constant lr after a short warmup and TIGER's cooldown, small batches and a cap in
#   passes (the paper: AdamW with a cosine decay): Adafactor did better on this CPU's budgets
#   ("Recipe search").
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
        "fusion": {"item_model": "none"},  # RPG ranks alone: the fusion was chosen for TIGER's beam
    },
}
MODEL_PRESETS: dict[tuple[str, str], dict] = {
    # 120 items: short IDs of the preset's small codebook, a PCA smaller than the catalogue (OPQ needs more
    # items than dimensions), a step budget and light dropout: a smoke run must learn it by heart.
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
