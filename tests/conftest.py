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


@pytest.fixture(autouse=True, scope="session")
def _test_ledger(tmp_path_factory):
    """Test evaluations made by the suite go to a ledger of its own, never the checkout's."""
    os.environ["TIGERREC_TEST_LEDGER"] = str(tmp_path_factory.mktemp("ledger") / "test_ledger.jsonl")
    yield


def run_and_check_memorised(cfg, run_dir):
    """Run the pipeline on the tiny data; every training example (or window) must be recalled."""
    from safetensors.torch import load_file

    from tigerrec.data import make_tiny
    from tigerrec.evaluate import evaluate
    from tigerrec.pipeline import prepare, run
    from tigerrec.rundir import load_ids

    metrics = run("tiny", cfg, run_dir)
    data, _, model = prepare(make_tiny(), load_ids(run_dir / "ids", cfg), cfg, ids_dir=run_dir / "ids")
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    on_train = evaluate(model, data.tokenizer, data.trie, data.train, data.user_tokens[data.train.users], beam_size=10)
    assert on_train["recall@10"] == 1.0
    return metrics, data


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
