"""Why training stopped is recorded, and a time cap that binds says so."""

import logging

from conftest import tiny_config

from tigerrec.pipeline import run


def test_a_pass_cap_ends_training_and_is_recorded(tmp_path, caplog):
    cfg = tiny_config(train={"steps": 10_000, "epochs": 2, "eval_every": 0, "log_every": 5, "checkpoint_every": 1000})
    with caplog.at_level(logging.INFO, logger="tigerrec.train"):
        metrics = run("tiny", cfg, tmp_path / "run")
    training = metrics["training"]
    assert training["stopped_by"] == "passes" and training["steps"] < 10_000
    assert training["samples_per_s"] > 0
    assert any("forecast on this machine" in r.getMessage() for r in caplog.records)


def test_a_minute_cap_that_binds_is_logged_and_recorded(tmp_path, caplog):
    cfg = tiny_config(train={"steps": 10_000_000, "max_minutes": 0.02, "eval_every": 0, "log_every": 5})
    with caplog.at_level(logging.WARNING, logger="tigerrec.train"):
        metrics = run("tiny", cfg, tmp_path / "run")
    assert metrics["training"]["stopped_by"] == "max_minutes"
    assert any("minute cap" in r.getMessage() for r in caplog.records)
