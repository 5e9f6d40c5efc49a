"""The test ledger: one JSON line for every evaluation on a test split, by any command.

Test metrics are meant to be read once per final configuration. The ledger makes that checkable:
each line records when a test split was scored, on which dataset, under which configuration
(a hash of its settings) and by which model, so repeated peeking at test data shows up.

Where it is written: the file named by ``TIGERREC_TEST_LEDGER``; else, when the command runs
from a tigerrec source checkout (``benchmarks/results/`` under the working directory), that
folder's ``test_ledger.jsonl``; else nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

LEDGER_ENV = "TIGERREC_TEST_LEDGER"
CHECKOUT_LEDGER = Path("benchmarks") / "results" / "test_ledger.jsonl"


def ledger_path() -> Path | None:
    if os.environ.get(LEDGER_ENV):
        return Path(os.environ[LEDGER_ENV])
    return CHECKOUT_LEDGER if CHECKOUT_LEDGER.parent.is_dir() else None


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a configuration's settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_test(dataset: str, config: dict[str, Any], model: str, metrics: dict[str, Any]) -> None:
    """Append one line to the ledger (see the module docstring for where). One ``write`` of one
    line to a file opened for appending, then fsync: concurrent writers never interleave lines."""
    path = ledger_path()
    if path is None:
        return
    line = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dataset": dataset,
        "config_hash": config_hash(config),
        "model": model,
        "metrics": metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
