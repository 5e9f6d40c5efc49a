"""The models a run trains: the minutes training gets within the end-to-end budget, and an ensemble's
members trained one after another and read back as one model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI_SETTINGS, small_config, snapshot

from tigerrec import members, pipeline
from tigerrec.cli import main
from tigerrec.config import RunConfig
from tigerrec.errors import TigerrecError
from tigerrec.pipeline import run
from tigerrec.report import render_report
from tigerrec.rundir import CHECKPOINT
from tigerrec.train import evaluate_examples, read_csv


def test_an_end_to_end_budget_cuts_training_and_keeps_its_minutes_on_resume(tmp_path):
    # Training gets what loading and the IDs leave, less a forecast of the final evaluation.
    metrics = run("tiny", small_config(budget_minutes=60.0), tmp_path)
    budget = json.loads((tmp_path / "budget.json").read_text())
    assert metrics["budget"] == budget and budget["budget_minutes"] == 60.0
    assert budget["spent_seconds"] > 0 and budget["final_eval_forecast_seconds"] > 0
    left = 60.0 - (budget["spent_seconds"] + budget["final_eval_forecast_seconds"]) / 60
    assert budget["train_minutes"] == pytest.approx(left, abs=0.01)
    assert metrics["config"]["train"]["max_minutes"] == pytest.approx(left, abs=0.01)
    assert (
        f"<dt>end-to-end budget</dt><dd>60 min: training at most {budget['train_minutes']:.1f} min after"
        in render_report(tmp_path)
    )
    # Asked again, the finished run returns its metrics: the budget resolves as before.
    assert run("tiny", small_config(budget_minutes=60.0), tmp_path) == metrics

    # A run resumed under the same budget keeps the training minutes it began with (its schedule)...
    budget["train_minutes"] = 7.5
    (tmp_path / "budget.json").write_text(json.dumps(budget))
    metrics = run("tiny", small_config(steps=30, budget_minutes=60.0), tmp_path)
    assert metrics["training"]["steps_this_run"] == 10 and metrics["config"]["train"]["max_minutes"] == 7.5
    # ... and under another budget it is fitted again, never above max_minutes.
    metrics = run("tiny", small_config(steps=30, budget_minutes=90.0, max_minutes=5.0), tmp_path)
    assert metrics["budget"]["budget_minutes"] == 90.0 and metrics["config"]["train"]["max_minutes"] == 5.0


def test_an_ensemble_trains_each_member_from_its_own_seed_and_every_reader_ranks_with_all(
    tmp_path, monkeypatch, caplog
):
    from safetensors.torch import load_file

    from tigerrec.model import TigerEnsemble
    from tigerrec.recommend import Recommender

    trained, real_train = [], members.train

    def spy(model, data, cfg, eval_cfg, directory):
        trained.append((cfg.seed, cfg.max_minutes, Path(directory).relative_to(tmp_path)))
        return real_train(model, data, cfg, eval_cfg, directory)

    monkeypatch.setattr(members, "train", spy)
    run("tiny", small_config(seed=4, max_minutes=30.0), tmp_path)  # one model first
    cfg = small_config(members=2, seed=4, max_minutes=30.0)
    metrics = run("tiny", cfg, tmp_path)  # grown into an ensemble: the trained model stays
    # Seeds 4 and 5, the second in members/1 on the minutes the first left.
    first_minutes = metrics["training"]["members"][0]["train_seconds"] / 60
    assert trained[:2] == [(4, 30.0, Path(".")), (4, 30.0, Path("."))] and trained[2][::2] == (5, Path("members/1"))
    assert trained[2][1] == pytest.approx(30.0 - first_minutes, abs=1e-3)
    member = tmp_path / "members" / "1"
    assert [(m["steps"], m["steps_this_run"]) for m in metrics["training"]["members"]] == [(20, 0), (20, 20)]
    assert [row["step"] for row in read_csv(member / "valid_log.csv")] == [20]
    assert not torch.equal(
        load_file(tmp_path / "model.safetensors")["head"], load_file(member / "model.safetensors")["head"]
    )
    # The metrics are the ensemble's, and a run read back or served ranks with both members.
    cfg_back, dataset, data, test, model = pipeline.load_trained_run(tmp_path)
    assert isinstance(model, TigerEnsemble) and len(model.members) == 2
    again = evaluate_examples(model, data, test, cfg_back, "test")
    assert {k: again[k] for k in ("recall@10", "ndcg@10")} == {k: metrics["test"][k] for k in ("recall@10", "ndcg@10")}
    recommender = Recommender.load(tmp_path, device="cpu")
    assert isinstance(recommender.model, TigerEnsemble)
    assert len(recommender.recommend([dataset.item_ids[i] for i in dataset.sequences[0][:3]], k=5)) == 5
    assert run("tiny", cfg, tmp_path) == metrics  # finished: no member trains again
    report = render_report(tmp_path)
    assert "TIGER, an ensemble of 2" in report and "NDCG@10, member 2" in report
    (member / "model.safetensors").unlink()  # a member without a model was not trained: the others rank
    assert not isinstance(pipeline.load_trained_run(tmp_path)[-1], TigerEnsemble)

    # Minutes that the first model spends all of leave the run that one model, never a shorter first model.
    short = tmp_path / "short"
    metrics = run("tiny", small_config(members=2, steps=10_000, max_minutes=0.002), short)
    assert "members" not in metrics["training"] and not (short / "members").exists()
    assert "ensemble member 2 of 2 not trained: train.max_minutes leaves" in caplog.text
    with pytest.raises(TigerrecError, match=r"train.members=2 \(an ensemble\) needs model.kind=tiger"):
        RunConfig().override(["model.kind=rpg", "ids.scheme=opq", "model.history=items", "train.members=2"]).validate()


@pytest.mark.parametrize("share, budget, second_trains", [(0.5, 30.0, True), (0.6, 30.0, False), (0.0, 20.0, False)])
def test_a_later_member_trains_on_the_minutes_left_only_if_they_reach_its_share(
    tmp_path, monkeypatch, caplog, share, budget, second_trains
):
    # Each member is made to report 20 minutes of training: under a 30-minute budget the second finds 10
    # left, half the first's time, and trains on them (its schedule ends within them) only if that is enough.
    # No minutes left train no member, whatever the share (a budget of 0 minutes would mean no limit).
    limits, real_train = [], members.train

    def took_20_minutes(model, data, cfg, eval_cfg, directory):
        limits.append(cfg.max_minutes)
        return {**real_train(model, data, cfg, eval_cfg, directory), "train_seconds": 1200.0}

    monkeypatch.setattr(members, "train", took_20_minutes)
    metrics = run("tiny", small_config(members=2, max_minutes=budget, member_min_share=share), tmp_path)
    assert limits == ([budget, 10.0] if second_trains else [budget])
    assert (
        ("members" in metrics["training"])
        == second_trains
        == (tmp_path / "members" / "1" / "model.safetensors").exists()
    )
    assert (f"less than {share:g} of the 20.0 the first member took" in caplog.text) != second_trains
    with pytest.raises(TigerrecError, match=r"train.member_min_share"):
        RunConfig().override(["train.member_min_share=1.5"]).validate()


def test_the_forecast_times_a_batch_of_typical_history_length(tmp_path, monkeypatch):
    # Evaluation batches histories of similar length, so most of its batches are short. A batch of
    # the first examples, padded to the longest among them, made the forecast 2.5-3x too high on Beauty.
    timed = []

    def spy(model, data, examples, cfg, desc, *args):
        if desc == "time decoding":
            timed.append((examples.lengths, data.valid.lengths))
        return evaluate_examples(model, data, examples, cfg, desc, *args)

    monkeypatch.setattr(members, "evaluate_examples", spy)
    run("tiny", small_config(budget_minutes=60.0).override(["eval.batch_size=8"]), tmp_path)
    (sample, lengths), _ = timed  # two passes over the same batch
    assert len(sample) == 8 and lengths.max() > lengths.mean() + 2
    assert np.abs(sample - lengths.mean()).max() < 1


def test_a_budget_spent_before_training_is_an_error_that_keeps_the_ids(tmp_path, capsys):
    with pytest.raises(
        TigerrecError,
        match=r"train\.budget_minutes=0\.001 leaves no time to train: loading, "
        r"Semantic IDs and timing the decoder took [0-9.]+ minutes and the final evaluation needs about",
    ):
        run("tiny", small_config(budget_minutes=0.001), tmp_path)
    assert (tmp_path / "ids" / "ids_metrics.json").is_file() and not (tmp_path / CHECKPOINT).exists()
    # The CLI flag sets the same key; the IDs are reused, not rebuilt.
    ids_before = snapshot(tmp_path / "ids")
    assert main(["run", "tiny", "--out", str(tmp_path), *CLI_SETTINGS, "--budget-minutes", "0.001"]) == 2
    assert "tigerrec: error: train.budget_minutes=0.001 leaves no time to train" in capsys.readouterr().err
    assert snapshot(tmp_path / "ids") == ids_before
