import os
from pathlib import Path

import pytest

from tigerrec.config import RunConfig
from tigerrec.presets import preset_config

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Embedding caches go to a temporary directory, the unpacked models stay shared."""
    os.environ.setdefault("TIGERREC_CACHE", str(Path.home() / ".cache" / "tigerrec"))
    yield


def tiny_config(recipe: str = "paper", **sections) -> RunConfig:
    """The tiny preset with faster settings for tests; ``sections`` override per section."""
    cfg = preset_config("tiny", recipe).to_dict()
    cfg["ids"]["scheme"] = "rqkmeans"
    for section, values in sections.items():
        cfg[section].update(values)
    return RunConfig.from_dict(cfg)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A small finished run directory (tiny data, 200 training steps), built once per session."""
    from tigerrec.pipeline import run

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(train={"steps": 200, "eval_every": 100, "checkpoint_every": 200, "log_every": 20})
    run("tiny", cfg, run_dir)
    return run_dir
