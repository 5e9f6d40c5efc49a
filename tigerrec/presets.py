"""Named settings: the paper's three benchmarks and a tiny generated dataset for smoke runs."""

from __future__ import annotations

from .config import RunConfig

# Training steps per dataset as in the paper; everything else is the paper default.
PRESETS: dict[str, dict] = {
    "beauty": {"train": {"steps": 200_000}},
    "sports": {"train": {"steps": 200_000}},
    "toys": {"train": {"steps": 100_000}},
    # Generated data, a fast encoder and small budgets: the whole pipeline in well under a minute.
    "tiny": {
        "text": {"encoder": "all-MiniLM-L6-v2"},
        "ids": {"epochs": 150, "codebook_size": 16, "hidden_dims": [128, 64], "code_dim": 16},
        "model": {"encoder_layers": 2, "decoder_layers": 2, "d_ff": 256, "num_heads": 4, "head_dim": 32, "user_buckets": 50},
        "train": {"steps": 600, "batch_size": 64, "warmup_steps": 100, "eval_every": 200, "checkpoint_every": 200, "log_every": 50},
        "eval": {"beam_size": 10, "batch_size": 256},
    },
}

# Training recipes, applied under a preset's own values (benchmarks/recipe_search.py and
# BENCHMARKS.md, "Time to quality", chose them on Beauty validation):
# - "paper": the paper's exact recipe (the config defaults).
# - "tuned" (the default): the paper's model and schedule, decayed linearly to 0 over the last
#   20% of the budget (steps, or --max-minutes); the best measured over a 2-hour budget.
# - "fast": one token per history item with every position of a sequence a target, the
#   paper's Adafactor at a constant lr after a short warmup, 20% cooldown, 40 epochs; ~5x
#   more samples per CPU-second, the best measured up to about an hour, a lower ceiling.
RECIPES: dict[str, dict] = {
    "paper": {},
    "tuned": {"train": {"cooldown_fraction": 0.2}},
    "fast": {
        "model": {"history": "items"},
        "train": {"schedule": "constant", "warmup_steps": 200, "cooldown_fraction": 0.2, "batch_size": 64, "epochs": 40.0,
                  "eval_every": 1000},
    },
}
DEFAULT_RECIPE = "tuned"
# Small data: the fast recipe keeps a step budget on the tiny preset instead of an epoch count.
TINY_FAST = {"train": {"epochs": 0.0, "batch_size": 32, "steps": 500, "warmup_steps": 20, "eval_every": 250, "lr": 0.02}}


# TIGER, Rajput et al. 2023, Table 1 (TIGER_SPEC.md): dataset -> method -> R@5, N@5, R@10, N@10.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "beauty": {"SASRec": (.0387, .0249, .0605, .0318), "TIGER": (.0454, .0321, .0648, .0384)},
    "sports": {"SASRec": (.0233, .0154, .0350, .0192), "TIGER": (.0264, .0181, .0400, .0225)},
    "toys": {"SASRec": (.0463, .0306, .0675, .0374), "TIGER": (.0521, .0371, .0712, .0432)},
}


def paper_table1(dataset_name: str) -> dict[str, tuple[float, float, float, float]]:
    """The paper's rows for a dataset whose name contains one of its benchmarks ("beauty", "amazon-Beauty", ...); {} otherwise."""
    name = dataset_name.lower()
    return next((rows for key, rows in PAPER_TABLE1.items() if key in name), {})


# Official Amazon 2014 category names, for the downloader.
AMAZON_CATEGORIES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}


def recipe_config(recipe: str = DEFAULT_RECIPE, preset: str | None = None) -> RunConfig:
    """The config of a training recipe, under a preset's values when one is named."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    layers = [RECIPES[recipe], PRESETS.get(preset, {})]
    if preset == "tiny" and recipe == "fast":
        layers.append(TINY_FAST)
    values: dict = {}
    for layer in layers:
        for section, settings in layer.items():
            values.setdefault(section, {}).update(settings)
    return RunConfig.from_dict(values)


def preset_config(name: str, recipe: str = DEFAULT_RECIPE) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return recipe_config(recipe, name)
