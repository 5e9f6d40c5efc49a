"""tigerrec: generative retrieval recommenders with Semantic IDs (TIGER, Rajput et al. 2023; RPG, Hou et al. 2025).

The public API, importable from ``tigerrec`` (loaded on first use, so ``import tigerrec``
stays cheap):

    from tigerrec import Recommender, RunConfig, load_dataset, run
    metrics = run("tiny", RunConfig(), "runs/tiny")
    recommender = Recommender.load("runs/tiny")
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tigerrec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# public name -> module that defines it
_PUBLIC = {
    "Recommender": "recommend",
    "RunConfig": "config",
    "DataConfig": "config",
    "TextConfig": "config",
    "IDsConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "EvalConfig": "config",
    "Dataset": "data",
    "DataError": "data",
    "load_dataset": "data",
    "leave_one_out": "data",
    "SemanticIDs": "semantic_ids",
    "SequenceModel": "model",
    "TigerModel": "model",
    "RPGModel": "rpg",
    "ModelKind": "config",
    "register": "registry",
    "run": "pipeline",
    "build_semantic_ids": "pipeline",
    "preset_config": "presets",
    "recipe_config": "presets",
    "ranking_metrics": "evaluate",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'tigerrec' has no attribute {name!r}")
