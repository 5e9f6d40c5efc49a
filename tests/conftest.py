import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tigerrec.config import ModelConfig, RunConfig
from tigerrec.model import TigerModel
from tigerrec.presets import preset_config
from tigerrec.sequences import Tokenizer

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
    from tigerrec.pipeline import run

    metrics = run("tiny", cfg, run_dir)
    return metrics, check_memorised(run_dir)


def check_memorised(run_dir):
    """The best model of a tiny-data run recalls every training example (or window); returns its data."""
    from tigerrec.data import make_tiny
    from tigerrec.evaluate import evaluate
    from tigerrec.pipeline import prepare
    from tigerrec.rundir import BEST_MODEL, load_ids, read_run_config

    cfg = read_run_config(run_dir)
    data, _, model = prepare(make_tiny(), load_ids(run_dir / "ids", cfg), cfg, ids_dir=run_dir / "ids")
    model.load(run_dir / BEST_MODEL)
    on_train = evaluate(model, data.tokenizer, data.trie, data.train, data.user_tokens[data.train.users], beam_size=10)
    assert on_train["recall@10"] == 1.0
    return data


def tiny_config(recipe: str = "paper", **sections) -> RunConfig:
    """The tiny preset with faster settings for tests; ``sections`` override per section."""
    cfg = preset_config("tiny", recipe).to_dict()
    cfg["ids"]["scheme"] = "rqkmeans"
    for section, values in sections.items():
        cfg[section].update(values)
    return RunConfig.from_dict(cfg)


TINY_RUN = {"steps": 600, "eval_every": 300, "checkpoint_every": 600}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run of the tiny preset (paper recipe, RQ-KMeans IDs) that has learned the data by heart
    (``test_train``), built once per session and read by the serving, catalogue and report tests."""
    from tigerrec.pipeline import run

    run_dir = tmp_path_factory.mktemp("tiny_run")
    run("tiny", tiny_config(train=TINY_RUN), run_dir)
    return run_dir


def small_tiger(num_items=60, size=8, seed=0):
    """An untrained small TIGER model over ``num_items`` random IDs of codes in [0, ``size``), and 16 encoded
    histories of 5 items: (codes, tokenizer, model, tokens)."""
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, size, size=(num_items * 3, 4)), axis=0)[:num_items]
    tokenizer = Tokenizer(codes, size, user_buckets=10, max_history=5)
    cfg = ModelConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1, decoder_layers=2)
    torch.manual_seed(seed)
    model = TigerModel(cfg, tokenizer.vocab_size, 4, size).eval()
    histories = torch.from_numpy(rng.integers(0, len(codes), size=(16, 5)))
    tokens = tokenizer.encoder_input(histories, torch.full((16,), tokenizer.user_offset))
    return codes, tokenizer, model, tokens


# ------------------------------------------------------------------ a short run, and reading what the CLI says

BUDGET = {"steps": 20, "eval_every": 20, "checkpoint_every": 20, "log_every": 10}
# The same settings on the command line: tiny_config is the tiny preset under the paper recipe with RQ-KMeans IDs.
CLI_SETTINGS = [
    "--recipe",
    "paper",
    "--scheme",
    "rqkmeans",
    "--steps",
    "20",
    "--set",
    "train.eval_every=20",
    "--set",
    "train.checkpoint_every=20",
    "--set",
    "train.log_every=10",
]


def small_config(**train) -> RunConfig:
    return tiny_config(train={**BUDGET, **train})


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished tiny run of 20 steps; tests that touch it work on a copy (``run_dir``)."""
    from tigerrec.pipeline import run

    run_dir = tmp_path_factory.mktemp("finished")
    run("tiny", small_config(), run_dir)
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path):
    return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(directory: Path) -> dict:
    """Every path under ``directory``, with the bytes and modification time of each file (not the lock file:
    each writer, refused or not, takes it)."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else "dir"
        for path in sorted(directory.rglob("*"))
        if path.name != ".tigerrec.lock"
    }


def error_line(capsys) -> str:
    """The one line the CLI printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
