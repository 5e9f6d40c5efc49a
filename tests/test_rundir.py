"""Run directories that cannot lie: each stage is reused only with the inputs it was built from, and a
corrupt or mismatched artefact is one line naming the file."""

import json

import pytest
import torch
from conftest import CLI_SETTINGS, error_line, small_config, snapshot

from tigerrec.cli import main
from tigerrec.data import make_tiny
from tigerrec.errors import TigerrecError
from tigerrec.pipeline import run
from tigerrec.rundir import CHECKPOINT, read_run_config
from tigerrec.train import read_csv

MODEL_FILES = (
    "checkpoint.pt, model.safetensors, train_log.csv, valid_log.csv, metrics.json, fingerprint.json, "
    "test_target_ranks.npz"
)


def test_changed_id_settings_are_refused_then_rebuilt_with_overwrite(run_dir):
    before = snapshot(run_dir)
    changed = small_config().override(["ids.seed=1"])
    with pytest.raises(TigerrecError) as refused:
        run("tiny", changed, run_dir)
    assert str(refused.value) == (
        f"{run_dir} was built with ids.seed=0 (now 1); pass --overwrite (Python: overwrite=True) "
        f"to rebuild it, which deletes ids/, {MODEL_FILES}"
    )
    assert snapshot(run_dir) == before  # refused before anything was written

    # A best score no model can reach: it must not survive the rebuild.
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    checkpoint["state"]["best"] = 2.0
    torch.save(checkpoint, run_dir / CHECKPOINT)
    metrics = run("tiny", changed, run_dir, overwrite=True)
    # Trained again from step 0 on the new IDs: no old checkpoint, best score or log rows.
    assert metrics["training"]["steps_this_run"] == 20 and metrics["training"]["steps"] == 20
    assert [row["step"] for row in read_csv(run_dir / "train_log.csv")] == [10, 20]
    valid_log = read_csv(run_dir / "valid_log.csv")
    assert [row["step"] for row in valid_log] == [20]
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)["state"]
    assert state["best"] == metrics["training"]["best_valid_ndcg@10"] == valid_log[0]["ndcg@10"] < 2.0
    assert json.loads((run_dir / "ids" / "ids_metrics.json").read_text())["fingerprint"]["ids.seed"] == 1
    assert json.loads((run_dir / "config.json").read_text())["ids"]["seed"] == 1


@pytest.mark.parametrize(
    "dataset, difference, deleted",
    [
        (make_tiny(seed=1), "dataset.interactions_sha256=", MODEL_FILES),  # the same 120 items, other users
        (make_tiny(num_items=100), "dataset.items=120 (now 100)", f"ids/, {MODEL_FILES}"),
    ],
    ids=["same-items", "other-items"],
)
def test_another_dataset_is_refused_and_the_directory_left_unchanged(run_dir, dataset, difference, deleted):
    before = snapshot(run_dir)
    with pytest.raises(TigerrecError) as refused:
        run(dataset, small_config(), run_dir)
    message = str(refused.value)
    assert message.startswith(f"{run_dir} was built with ") and difference in message
    assert message.endswith(f"which deletes {deleted}")
    assert snapshot(run_dir) == before  # config.json and items.jsonl too


def test_budgets_may_change_on_resume_but_the_recipe_may_not(run_dir):
    before = snapshot(run_dir)
    with pytest.raises(TigerrecError) as refused:
        run("tiny", small_config(lr=0.02).override(["model.dropout=0.2"]), run_dir)
    assert (
        f"{run_dir} was built with model.dropout=0.1 (now 0.2), train.lr=0.01 (now 0.02); "
        f"pass --overwrite (Python: overwrite=True) to rebuild it, which deletes {MODEL_FILES}"
    ) == str(refused.value)
    assert snapshot(run_dir) == before
    # Budget, cadence and precision (RESUMABLE_KEYS) and eval settings: the run goes on where it stopped.
    longer = small_config(
        steps=30, eval_every=30, log_every=5, checkpoint_every=30, valid_users=100, max_minutes=30.0, bf16="off"
    ).override(["text.batch_size=16", "eval.beam_size=12"])
    metrics = run("tiny", longer, run_dir)
    assert metrics["training"]["steps"] == 30 and metrics["training"]["steps_this_run"] == 10


def test_a_finished_run_asked_again_trains_and_decodes_nothing(run_dir):
    kept = ["checkpoint.pt", "model.safetensors", "train_log.csv", "valid_log.csv", "metrics.json"]
    before = {name: (run_dir / name).read_bytes() for name in kept}
    metrics = run("tiny", small_config().override(["experiment.seed=3"]), run_dir)  # settings of no run stage
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    assert {name: (run_dir / name).read_bytes() for name in kept} == before  # metrics.json too: no new timings

    # A time budget already spent: no further step, though other settings send it to the test again.
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    checkpoint["state"]["seconds"] = 120.0
    torch.save(checkpoint, run_dir / CHECKPOINT)
    metrics = run("tiny", small_config(steps=40, max_minutes=1.0), run_dir)
    assert metrics["training"]["steps_this_run"] == 0 and metrics["training"]["steps"] == 20
    assert [row["step"] for row in read_csv(run_dir / "valid_log.csv")] == [20] and "recall@10" in metrics["test"]


def test_ids_without_a_record_of_their_inputs_are_refused(run_dir):
    ids_metrics_path = run_dir / "ids" / "ids_metrics.json"
    ids_metrics = json.loads(ids_metrics_path.read_text())
    del ids_metrics["fingerprint"]
    ids_metrics_path.write_text(json.dumps(ids_metrics))
    with pytest.raises(TigerrecError, match=r"does not record what the Semantic IDs were built from; delete .*ids"):
        run("tiny", small_config(), run_dir)


def test_settings_this_version_retired_read_back_only_at_the_value_that_left_them_off(run_dir):
    path = run_dir / "config.json"
    written = json.loads(path.read_text())
    cfg = read_run_config(run_dir)
    path.write_text(json.dumps({**written, "train": {**written["train"], "ema_decay": 0.0, "recent_repeats": 0}}))
    assert read_run_config(run_dir) == cfg
    path.write_text(json.dumps({**written, "train": {**written["train"], "ema_decay": 0.999}}))
    with pytest.raises(TigerrecError, match=r"config.json: trained with train.ema_decay=0.999, which this version"):
        read_run_config(run_dir)


def test_a_model_without_any_record_is_refused(run_dir):
    (run_dir / "fingerprint.json").unlink()
    with pytest.raises(TigerrecError, match="holds a trained model but no record of its settings"):
        run("tiny", small_config(), run_dir)


# ------------------------------------------------------------------ corrupt artefacts


@pytest.mark.parametrize(
    "name, command, message",
    [
        ("model.safetensors", "recommend", "model.safetensors is corrupt (Error while deserializing header"),
        ("config.json", "recommend", "config.json is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            "items.jsonl",
            "recommend",
            "items.jsonl, line 1: expected a JSON object with an item_id, got 'not what it should be'",
        ),
        ("ids/semantic_ids.csv", "recommend", "semantic_ids.csv: expected a header 'item_id,c1,...'"),
        ("checkpoint.pt", "run", "checkpoint.pt is corrupt or not a tigerrec checkpoint"),
        ("fingerprint.json", "run", "fingerprint.json is not valid JSON"),
        ("ids/ids_metrics.json", "run", "ids_metrics.json is not valid JSON"),
    ],
)
def test_corrupt_artefacts_are_one_line_naming_the_file(run_dir, capsys, name, command, message):
    (run_dir / name).write_text("not what it should be\n")
    if command == "recommend":
        args = ["recommend", str(run_dir), "--history", "item1", "--device", "cpu"]
    else:
        args = ["run", "tiny", "--out", str(run_dir), *CLI_SETTINGS]
    assert main(args) == 2
    line = error_line(capsys)
    assert line.startswith(f"tigerrec: error: {run_dir}") and message in line


def test_a_model_of_other_settings_than_config_json_is_named(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["d_model"] = 64
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main(["recommend", str(run_dir), "--history", "item1", "--device", "cpu"]) == 2
    assert f"{run_dir / 'model.safetensors'} does not fit the model that config.json describes (" in error_line(capsys)
