"""Recipe search on Beauty validation: short training runs, one at a time, each a validation curve.

Every recipe is a list of ``section.key=value`` overrides on top of the dataset's
preset with the paper's recipe. Each run trains for ``--minutes`` of wall-clock time (validation included)
on Semantic IDs built once (``--ids-dir``), validates a fixed random subset of users
every ``--eval-minutes`` and never touches the test split. Results are merged into
``--results`` (one entry per recipe: overrides, full config, samples, minutes,
validation curve, CPU), so a search can be extended run by run; a recipe run again under
another ``--minutes`` gets an entry of its own.

    python benchmarks/recipe_search.py --data-dir ../shared/data/beauty --ids-dir runs/beauty-ids \
        --out runs/search --minutes 12 paper paper-codebook-init

``--list`` prints the recipes, ``--table`` the results as Markdown (summary and curves).

The ``sasrec-*`` recipes tune the SASRec baseline the same way (``sasrec.key=value`` overrides on
``config.SASRecConfig``, validated on the same users every ``--sasrec-eval-every`` steps, early
stopping after ``--sasrec-patience`` validations without a new best; no ``--ids-dir`` needed):

    python benchmarks/recipe_search.py --minutes 20 sasrec-original sasrec-drop0.2-heads2
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tigerrec.baselines import train_sasrec
from tigerrec.data import leave_one_out, load_dataset
from tigerrec.device import provenance, use_bf16
from tigerrec.evaluate import evaluate
from tigerrec.io import read_json, write_json
from tigerrec.members import load_best_model
from tigerrec.pipeline import held_out_examples, prepare
from tigerrec.presets import preset_config
from tigerrec.rundir import IDS_DIR, VALID_LOG, load_ids
from tigerrec.train import read_csv, train, validation_examples

# The settings the search varies, on top of the paper's recipe; its entry "paper" adds the 20%
# cooldown that every later search run kept. Variants of settings since removed (AdamW under a cosine
# schedule, linear and cosine schedules, the paper's tokens under a causal encoder, item tokens) are
# recorded in BENCHMARKS.md, "Recipe search" and the sections after it.
ITEMS = ["model.history=items", "train.batch_size=64"]
FAST = [*ITEMS, "train.schedule=constant", "train.warmup_steps=200", "train.cooldown_fraction=0.2"]
RECIPES: dict[str, list[str]] = {
    "paper": ["train.cooldown_fraction=0.2"],
    # A higher peak rate. torch's Adafactor caps its relative step at 1/sqrt(step), so lr .02 acts
    # only while step < 10,000: .02 up to step 2,500, then 1/sqrt(step).
    "paper-lr2e-2": ["train.cooldown_fraction=0.2", "train.lr=0.02"],
    # A longer final cooldown: the last half of the budget decays linearly to 0.
    "paper-cool0.5": ["train.cooldown_fraction=0.5"],
    # Half the batch at the same rate: twice the updates per sample seen.
    "paper-batch128": ["train.cooldown_fraction=0.2", "train.batch_size=128"],
    # Code embeddings that start from the RQ-VAE codewords (model.embed_init).
    "paper-codebook-init": ["train.cooldown_fraction=0.2", "model.embed_init=codebooks"],
    # Second seeds of the two, to tell their gap from run-to-run noise.
    "paper-seed1": ["train.cooldown_fraction=0.2", "train.seed=1"],
    "paper-codebook-init-seed1": ["train.cooldown_fraction=0.2", "model.embed_init=codebooks", "train.seed=1"],
    "items-adafactor": [*ITEMS, "train.cooldown_fraction=0.2", "train.warmup_steps=2000"],
    # Variations of the recipe that was `fast` before the pooled history (history=items, here with the
    # search's time budget).
    "fast": FAST,
    "fast-drop0": [*FAST, "model.dropout=0.0"],
    "fast-drop0.2": [*FAST, "model.dropout=0.2"],
    "fast-nouser": [*FAST, "model.use_user_token=false"],
    "fast-batch32": [*FAST, "train.batch_size=32"],
    # A reserved unknown-user token for requests without a user id, trained on 5% of the examples.
    "fast-drop0-anonymous0.05": [*FAST, "model.dropout=0.0", "model.anonymous_share=0.05"],
    "fast-drop0-nouser": [*FAST, "model.dropout=0.0", "model.use_user_token=false"],
    "fast-drop0-nouser-batch128-lr2e-2": [
        *FAST,
        "model.dropout=0.0",
        "model.use_user_token=false",
        "train.batch_size=128",
        "train.lr=2e-2",
    ],
}
# RPG: variations of the "rpg" model kind from where its search started (32 codes, dropout 0.1 on the
# input; presets.MODELS["rpg"] now holds what it chose); --ids-dir must hold OPQ IDs of as many codes.
RPG_START = ["ids.levels=32", "model.input_dropout=0.1"]
RPG_RECIPES: dict[str, list[str]] = {
    name: RPG_START + changes
    for name, changes in {
        "rpg": [],
        "rpg-drop0.3": ["model.dropout=0.3"],
        "rpg-drop0.5": ["model.dropout=0.5"],
        "rpg-input0.5": ["model.input_dropout=0.5"],
        # The RPG paper's dropout: 0.5 on the input and the attention weights, none on the residual branches.
        "rpg-paper-dropout": ["model.input_dropout=0.5", "model.attention_dropout=0.5", "model.dropout=0.0"],
        "rpg-d448": ["model.d_model=448", "model.head_dim=112"],
        "rpg-temp0.05": ["model.logit_temperature=0.05"],
        "rpg-batch256-lr2e-2": ["train.batch_size=256", "train.lr=2e-2"],
        # The ablation over the ID length m (each needs --ids-dir with IDs of that many codes).
        "rpg-m16": ["ids.levels=16"],
        "rpg-m64": ["ids.levels=64"],
    }.items()
}
# SASRec: variations of the original paper's sizes for the sparse Amazon data (config.SASRecConfig:
# 1 head, dropout 0.5, Adam 1e-3): the lower dropout of later cross-entropy reproductions, a wider
# model and a higher rate.
SASREC_RECIPES: dict[str, list[str]] = {
    "sasrec-original": [],
    "sasrec-drop0.2-heads2": ["sasrec.dropout=0.2", "sasrec.heads=2"],
    "sasrec-drop0.3-heads2": ["sasrec.dropout=0.3", "sasrec.heads=2"],
    "sasrec-drop0.2-heads2-lr3e-3": ["sasrec.dropout=0.2", "sasrec.heads=2", "sasrec.lr=0.003"],
    "sasrec-drop0.2-heads2-wd0.1": ["sasrec.dropout=0.2", "sasrec.heads=2", "sasrec.weight_decay=0.1"],
    "sasrec-drop0.3-heads2-hidden128": ["sasrec.dropout=0.3", "sasrec.heads=2", "sasrec.hidden=128"],
    "sasrec-hidden128": ["sasrec.hidden=128"],
    "sasrec-lr2e-3": ["sasrec.lr=0.002"],
}
DEFAULT_MINUTES = 12.0
MODEL_OF = (
    {name: "tiger" for name in RECIPES}
    | {name: "rpg" for name in RPG_RECIPES}
    | {name: "sasrec" for name in SASREC_RECIPES}
)
RECIPES |= RPG_RECIPES | SASREC_RECIPES


def run_sasrec_recipe(name: str, dataset, args) -> dict:
    """Train SASRec for the budget; its curve is validated on the TIGER recipes' users."""
    cfg = (
        preset_config(args.preset)
        .override(
            [
                *RECIPES[name],
                f"sasrec.max_minutes={args.minutes}",
                "sasrec.steps=1000000000",
                f"sasrec.eval_every={args.sasrec_eval_every}",
                f"sasrec.patience={args.sasrec_patience}",
                f"train.valid_users={args.valid_users}",
            ]
        )
        .validate()
    )
    split = leave_one_out(dataset, cfg.data.backtest)
    users = validation_examples(held_out_examples(split, cfg.data.max_history)[0], cfg.train).users
    start = time.perf_counter()
    _, summary = train_sasrec(
        split.train, dataset.num_items, [split.valid_history[u] for u in users], split.valid_target[users], cfg.sasrec
    )
    return search_entry(name, args, start, summary, summary["history"], cfg)


def search_entry(name: str, args, start: float, summary: dict, curve: list[dict], cfg, **extra) -> dict:
    """One run's entry in the results: recipe, machine, date, budget, training summary, ``extra``, curve, config."""
    return {
        "recipe": name,
        "model": MODEL_OF[name],
        "overrides": RECIPES[name],
        **provenance(),
        "budget_minutes": args.minutes,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        **{key: summary[key] for key in ("samples", "steps", "parameters", "best_valid_ndcg@10")},
        **extra,
        "curve": curve,
        "config": cfg.to_dict(),
    }


def run_recipe(name: str, dataset, args) -> dict:
    if MODEL_OF[name] == "sasrec":
        return run_sasrec_recipe(name, dataset, args)
    cfg = preset_config(args.preset, "paper", MODEL_OF[name]).override(
        [
            *RECIPES[name],
            f"train.max_minutes={args.minutes}",
            "train.eval_every=0",
            f"train.eval_every_minutes={args.eval_minutes}",
            f"train.valid_users={args.valid_users}",
            "train.log_every=50",
            "train.checkpoint_every=1000000",
        ]
    )
    run_dir = Path(args.out) / (name if args.minutes == DEFAULT_MINUTES else f"{name}-{args.minutes:g}min")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a search run always starts fresh
    shutil.copytree(args.ids_dir, run_dir / IDS_DIR)
    ids = load_ids(run_dir / IDS_DIR, cfg)
    if ids.quantized.shape[1] != cfg.ids.levels:
        raise SystemExit(
            f"{name}: --ids-dir {args.ids_dir} holds IDs of {ids.quantized.shape[1]} codes, the recipe "
            f"{cfg.ids.levels}; build them with `tigerrec ids ... --set ids.levels={cfg.ids.levels}`"
        )
    data, _, model = prepare(dataset, ids, cfg, run_dir / IDS_DIR)
    start = time.perf_counter()
    summary = train(model, data, cfg.train, cfg.eval, run_dir)
    curve = read_csv(run_dir / VALID_LOG)
    # The best model on the same users as anonymous requests: the reserved unknown-user token
    # where the recipe trains one (model.anonymous_share), else no user token at all.
    valid = validation_examples(data.valid, cfg.train)
    anonymous = np.full(len(data.user_tokens), data.tokenizer.user_token(None))
    load_best_model(model, run_dir)
    bf16 = use_bf16(str(next(model.parameters()).device), cfg.train.bf16)
    anonymous_metrics = evaluate(
        model,
        data.tokenizer,
        data.trie,
        valid,
        anonymous[valid.users],
        cfg.eval.beam_size,
        cfg.eval.top_k,
        cfg.eval.batch_size,
        bf16,
        desc="anonymous",
    )
    return search_entry(name, args, start, summary, curve, cfg, anonymous_valid=anonymous_metrics)


def run_label(run: dict) -> str:
    """The recipe's name, with its budget when it is not the search's default."""
    budget = run.get("budget_minutes", DEFAULT_MINUTES)
    return run["recipe"] if budget == DEFAULT_MINUTES else f"{run['recipe']} ({budget:g} min)"


def markdown(results: dict) -> str:
    """A summary row per run, then every run's validation N@10 against minutes and samples."""
    lines = [
        "| recipe | machine | minutes | samples | steps | best valid R@10 | best valid N@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in sorted(results["runs"], key=lambda r: -r["best_valid_ndcg@10"]):
        best = max(run["curve"], key=lambda row: row["ndcg@10"])
        lines.append(
            f"| {run_label(run)} | {run['machine']} | {run['minutes']} | {run['samples']:,} | {run['steps']:,} | "
            f"{best['recall@10']:.4f} | {best['ndcg@10']:.4f} |"
        )
    lines += ["", "Validation N@10 at each evaluation (minutes: samples: N@10):", ""]
    for run in results["runs"]:
        points = ", ".join(
            f"{row['minutes']:.1f}: {row['samples'] / 1e6:.2f}M: {row['ndcg@10']:.4f}" for row in run["curve"]
        )
        lines.append(f"- {run_label(run)}: {points}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--data-dir", default="../shared/data/beauty")
    parser.add_argument("--preset", default="beauty")
    parser.add_argument("--ids-dir", help="a Semantic IDs directory (tigerrec ids ... --out DIR) shared by all runs")
    parser.add_argument("--out", default="runs/search")
    parser.add_argument(
        "--minutes", type=float, default=DEFAULT_MINUTES, help="wall-clock budget per run, validation included"
    )
    parser.add_argument("--eval-minutes", type=float, default=2.0)
    parser.add_argument("--valid-users", type=int, default=4000)
    parser.add_argument(
        "--sasrec-eval-every", type=int, default=1000, help="SASRec: training steps between validations"
    )
    parser.add_argument(
        "--sasrec-patience",
        type=int,
        default=5,
        help="SASRec: validations without a new best before stopping; 0 = never",
    )
    parser.add_argument("--results", default="benchmarks/results/2026-11-30-recipe-search/recipe_search.json")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--table", action="store_true", help="print --results as Markdown and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown(read_json(args.results)))
        return
    if args.list:
        for name, overrides in RECIPES.items():
            print(f"{name:32s} {' '.join(overrides)}")
        return
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; --list shows them")
    if not args.ids_dir and any(MODEL_OF[name] != "sasrec" for name in args.recipes or RECIPES):
        parser.error("--ids-dir is required for the TIGER and RPG recipes")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    dataset = load_dataset(args.data_dir, 3)
    results_path = Path(args.results)
    for name in args.recipes or list(RECIPES):
        entry = run_recipe(name, dataset, args)
        results = read_json(results_path) if results_path.exists() else {"runs": []}
        # One entry per recipe and budget (entries without a budget are the 12-minute ones).
        results["runs"] = [
            r
            for r in results["runs"]
            if (r["recipe"], r.get("budget_minutes", DEFAULT_MINUTES)) != (name, args.minutes)
        ] + [entry]
        write_json(results_path, results)
        best = max(entry["curve"], key=lambda row: row["ndcg@10"])
        print(
            f"{name}: best valid N@10 {best['ndcg@10']:.4f} R@10 {best['recall@10']:.4f} at {best['minutes']} min, "
            f"{entry['samples']:,} samples in {entry['minutes']} min"
        )


if __name__ == "__main__":
    main()
