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


def tiny_config(**sections) -> RunConfig:
    """The tiny preset with faster settings for tests; ``sections`` override per section."""
    cfg = preset_config("tiny").to_dict()
    cfg["ids"]["scheme"] = "rqkmeans"
    for section, values in sections.items():
        cfg[section].update(values)
    return RunConfig.from_dict(cfg)
