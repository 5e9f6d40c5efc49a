"""Run directories that cannot lie, settings checked before any work, one-line errors from the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from tigerrec import members, pipeline
from tigerrec.cli import main
from tigerrec.config import RunConfig
from tigerrec.data import make_tiny
from tigerrec.errors import TigerrecError
from tigerrec.io import LOCK_FILE
from tigerrec.pipeline import run
from tigerrec.report import render_report
from tigerrec.rundir import CHECKPOINT, read_run_config
from tigerrec.train import evaluate_examples, read_csv

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
MODEL_FILES = (
    "checkpoint.pt, model.safetensors, train_log.csv, valid_log.csv, metrics.json, fingerprint.json, "
    "test_target_ranks.npz"
)


def small_config(**train) -> RunConfig:
    return tiny_config(train={**BUDGET, **train})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run of 20 steps; tests that touch it work on a copy (``run_dir``)."""
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
        if path.name != LOCK_FILE
    }


def error_line(capsys) -> str:
    """The one line the CLI printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ run directories


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


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "config train.batch_size must be >= 1, got 0"),
        ("train.steps=0", "config train.steps must be >= 1, got 0"),
        ("train.lr=0", "config train.lr must be > 0, got 0.0"),
        ("train.lr=.nan", "config train.lr must be > 0, got nan"),
        ("train.log_every=0", "config train.log_every must be >= 1, got 0"),
        ("train.members=0", "config train.members must be >= 1, got 0"),
        ("train.warmup_steps=0", "config train.warmup_steps must be >= 1 with train.schedule=rsqrt, got 0"),
        ("train.seed=9223372036854775808", "config train.seed must be in [0, 2**63), got 9223372036854775808"),
        ("model.dropout=1", "config model.dropout must be in [0, 1), got 1.0"),
        ("model.history=tokens", "config model.history must be one of codes, items, pooled, got tokens"),
        ("train.schedule=cosine", "config train.schedule must be one of rsqrt, constant, got cosine"),
        ("eval.top_k=30", "config eval.top_k must be <= eval.beam_size (20), got 30"),
        ("eval.top_k=5", "config eval.top_k must be >= 10 (the metrics are Recall and NDCG at 5 and 10), got 5"),
        ("ids.codebook_size=1", "config ids.codebook_size must be >= 2, got 1"),
        ("ids.hidden_dims=[128, 0]", "config ids.hidden_dims must be a list of values >= 1, got [128, 0]"),
        ("ids.scheme=pq", "config ids.scheme must be one of rqvae, rqkmeans, lsh, random, opq, got pq"),
        ("text.template=''", 'config text.template must be text with plain {field} names such as {title}, got ""'),
        ("sasrec.heads=3", "config sasrec.hidden must be a multiple of sasrec.heads (3), got 64"),
        (
            "experiment.epsilons=[0.1, 2]",
            "config experiment.epsilons must be a list of values in [0, 1], got [0.1, 2.0]",
        ),
        ("train.steps=[", "override 'train.steps=[': the value is not valid YAML"),
    ],
)
def test_bad_settings_name_the_key_the_value_and_what_is_allowed(override, message):
    with pytest.raises(TigerrecError) as info:
        RunConfig().override([override]).validate()
    assert message in str(info.value)


def test_every_preset_recipe_and_model_kind_is_valid():
    from tigerrec.presets import MODELS, PRESETS, RECIPES, recipe_config

    for recipe in RECIPES:
        for preset in PRESETS:
            for model in MODELS:
                assert recipe_config(recipe, preset, model).validate().model.kind == model


def test_scheme_flag_without_codewords_starts_code_embeddings_at_random():
    """The default recipe starts code embeddings from the codewords; --scheme lsh/random have none."""
    from tigerrec.cli import build_parser, load_config

    def embed_init(*flags):
        return load_config(
            build_parser().parse_args(["run", "beauty", "--out", "x", *flags]), "beauty"
        ).model.embed_init

    assert embed_init() == embed_init("--scheme", "rqkmeans") == "codebooks"
    assert embed_init("--scheme", "lsh") == embed_init("--scheme", "random") == "normal"
    assert embed_init("--recipe", "paper") == "normal"


# ------------------------------------------------------------------ the command line


def test_cli_errors_are_one_line_and_exit_code_2(run_dir, tmp_path, capsys):
    new = tmp_path / "new"
    cases = [
        (
            ["run", "tiny", "--out", str(new), "--set", "train.batch_size=0"],
            "config train.batch_size must be >= 1, got 0",
        ),
        (["run", "tiny", "--out", str(new), "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["run", "nowhere", "--out", str(new)], "'nowhere' is neither a preset"),
        (
            ["run", "tiny", "--out", str(run_dir), *CLI_SETTINGS, "--set", "ids.seed=1"],
            f"{run_dir} was built with ids.seed=0 (now 1); pass --overwrite",
        ),
        (
            [
                "recommend",
                str(run_dir),
                "--history",
                "item1",
                "--temperature",
                "1",
                "--seed",
                str(2**63),
                "--device",
                "cpu",
            ],
            "seed must be in [0, 2**63), got 9223372036854775808",
        ),
        (
            ["recommend", str(run_dir), "--history", "item1", "--device", "tpu0"],
            "unknown device 'tpu0'; use cpu, cuda or cuda:N",
        ),
        (["recommend", str(run_dir), "--history", "item1,nope", "--device", "cpu"], "unknown item id 'nope'"),
        (["recommend", str(tmp_path / "missing"), "--history", "item1"], "config.json is missing"),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (["recommend", str(run_dir), "--history", "item1", "--device", "cuda"], "device 'cuda' is not available")
        )
    before = snapshot(run_dir)
    for args, message in cases:
        assert main(args) == 2, args
        line = error_line(capsys)
        assert line.startswith(("tigerrec: error: ", "tigerrec run: error: ")) and message in line, (args, line)
    assert not new.exists() and snapshot(run_dir) == before


def test_ids_command_refuses_other_settings_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "ids"
    args = [
        "ids",
        "tiny",
        "--out",
        str(out),
        "--recipe",
        "paper",
        "--scheme",
        "rqkmeans",
        "--set",
        "text.encoder=all-MiniLM-L6-v2",
        "--set",
        "ids.codebook_size=16",
        "--set",
        "ids.hidden_dims=[128, 64]",
        "--set",
        "ids.code_dim=16",
    ]
    assert main(args) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert main([*args, "--set", "ids.seed=1"]) == 2
    assert error_line(capsys) == (
        f"tigerrec: error: {out} was built with ids.seed=0 (now 1); pass --overwrite "
        "(Python: overwrite=True) to rebuild it, which deletes semantic_ids.csv, "
        "quantizer.safetensors, ids_metrics.json"
    )
    assert snapshot(out) == before
    assert main([*args, "--set", "ids.seed=1", "--overwrite"]) == 0
    assert json.loads((out / "ids_metrics.json").read_text())["fingerprint"]["ids.seed"] == 1
