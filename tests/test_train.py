import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY_RUN, check_memorised, run_and_check_memorised, tiny_config
from safetensors.torch import load_file

from tigerrec.data import leave_one_out, make_tiny
from tigerrec.errors import TigerrecError
from tigerrec.pipeline import build_semantic_ids, prepare
from tigerrec.presets import preset_config
from tigerrec.quantize import load_quantizer
from tigerrec.rundir import CHECKPOINT, QUANTIZER_FILE
from tigerrec.sequences import length_bucketed_batches
from tigerrec.train import evaluate_examples, read_csv, train, validation_examples


@pytest.fixture(scope="module")
def tiny_ids(tmp_path_factory):
    cfg = tiny_config()
    dataset = make_tiny()
    return dataset, build_semantic_ids(dataset, cfg, tmp_path_factory.mktemp("ids")), cfg


def test_tiny_dataset_is_overfit_to_recall_one(tiny_run):
    check_memorised(tiny_run)
    saved = json.loads((tiny_run / "metrics.json").read_text())
    # Held-out targets follow the same chains, except the few transitions that occur only in a test position.
    assert saved["test"]["recall@10"] >= 0.95 and saved["valid"]["recall@10"] >= 0.95
    assert set(saved["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert saved["training"]["steps"] == TINY_RUN["steps"] and saved["timings"]["train_seconds"] > 0
    assert saved["machine"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", saved["date"])  # where and when it was measured
    log = read_csv(tiny_run / "train_log.csv")
    assert log[-1]["loss"] < log[0]["loss"] / 5


def test_codebook_init_starts_code_embeddings_from_the_codewords(tmp_path):
    """model.embed_init=codebooks: each level's code embeddings keep the codewords' geometry at embed_init_std;
    collision codes, user and special tokens are initialised as without it."""
    cfg = tiny_config(model={"embed_init": "codebooks"})
    dataset, ids_dir = make_tiny(), tmp_path / "ids"
    ids = build_semantic_ids(dataset, cfg, ids_dir)
    data, _, model = prepare(dataset, ids, cfg, ids_dir)
    _, _, plain = prepare(dataset, ids, tiny_config())  # same seed, random embeddings
    codebooks = load_quantizer(ids_dir / QUANTIZER_FILE).codebooks
    weight, tokenizer = model.embed.weight.detach(), data.tokenizer
    for level, codewords in enumerate(codebooks):
        rows = weight[tokenizer.code_tokens(level)]
        assert abs(float(rows.std()) - cfg.model.embed_init_std) < 0.05
        upper = torch.triu_indices(len(rows), len(rows), 1)
        code_distances = torch.cdist(codewords, codewords)[upper[0], upper[1]]
        embed_distances = torch.cdist(rows, rows)[upper[0], upper[1]]
        assert torch.corrcoef(torch.stack([code_distances, embed_distances]))[0, 1] > 0.9, level
        assert not torch.allclose(rows, plain.embed.weight[tokenizer.code_tokens(level)])
    untouched = torch.cat(
        [
            torch.arange(tokenizer.code_tokens(0)[0]),  # special tokens
            tokenizer.code_tokens(len(codebooks)),  # the collision code
            torch.arange(tokenizer.user_offset, tokenizer.vocab_size),
        ]
    )
    assert torch.equal(weight[untouched], plain.embed.weight.detach()[untouched])
    assert torch.equal(model.head, plain.head)  # the output rows stay random
    with pytest.raises(TigerrecError, match="pass ids_dir"):
        prepare(dataset, ids, cfg)
    with pytest.raises(
        TigerrecError,
        match="embed_init=codebooks needs .* got model.kind=tiger, ids.scheme=lsh; set model.embed_init=normal",
    ):
        tiny_config("tuned", ids={"scheme": "lsh"}).validate()  # the default recipe starts from the codewords


def test_backtest_trains_and_tests_one_step_early(tiny_ids):
    """data.backtest=1: the held-out "test" examples are the real validation ones, and the training
    examples are those of the real split less each user's last target."""
    dataset, ids, _ = tiny_ids
    real = leave_one_out(dataset)
    data, test, _ = prepare(dataset, ids, tiny_config())
    back_data, back_test, _ = prepare(dataset, ids, tiny_config(data={"backtest": 1}))
    assert back_test.targets.tolist() == real.valid_target.tolist()
    assert back_data.valid.targets.tolist() == [t[-1] for t in real.train]
    assert len(data.train) - len(back_data.train) == dataset.num_users  # one target fewer per user
    assert test.targets.tolist() == real.test_target.tolist()


def test_backtest_logs_the_forward_targets_beside_validation(tiny_ids, tmp_path):
    """With data.backtest each validation also decodes the same users' next targets (the real validation
    items) into forward_* columns; selection stays on validation, and a normal run never decodes its test."""
    dataset, ids, _ = tiny_ids
    settings = {"steps": 40, "eval_every": 20, "checkpoint_every": 40, "valid_users": 30}
    cfg = tiny_config(data={"backtest": 1}, train=settings)
    data, test, model = prepare(dataset, ids, cfg)
    assert data.forward is test
    summary = train(model, data, cfg.train, cfg.eval, tmp_path / "back")
    rows = read_csv(tmp_path / "back" / "valid_log.csv")
    assert [r["step"] for r in rows] == [20, 40]
    assert summary["best_valid_ndcg@10"] == max(r["ndcg@10"] for r in rows)
    # The logged forward metrics are those of the final model on the same 30 users' next targets.
    users = validation_examples(data.valid, cfg.train).users
    forward = validation_examples(data.forward, cfg.train)
    assert forward.users.tolist() == users.tolist()
    again = evaluate_examples(model, data, forward, cfg, "forward")
    assert rows[-1]["forward_users"] == 30 and rows[-1]["forward_recall@10"] == pytest.approx(
        again["recall@10"], abs=1e-9
    )
    plain = tiny_config(train=settings)
    data, _, model = prepare(dataset, ids, plain)
    assert data.forward is None
    train(model, data, plain.train, plain.eval, tmp_path / "plain")
    assert not any(k.startswith("forward_") for k in read_csv(tmp_path / "plain" / "valid_log.csv")[0])


def _train(dataset, ids, cfg, run_dir):
    data, _, model = prepare(dataset, ids, cfg)
    train(model, data, cfg.train, cfg.eval, run_dir)
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tiny_ids, tmp_path):
    dataset, ids, cfg = tiny_ids
    settings = {"eval_every": 1000, "checkpoint_every": 10, "log_every": 10}
    whole = _train(dataset, ids, tiny_config(train={**settings, "steps": 60}), tmp_path / "whole")
    _train(dataset, ids, tiny_config(train={**settings, "steps": 30}), tmp_path / "split")  # "killed" at 30
    resumed = _train(dataset, ids, tiny_config(train={**settings, "steps": 60}), tmp_path / "split")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    steps = [row["step"] for row in read_csv(tmp_path / "split" / "train_log.csv")]
    assert steps == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("epochs, steps", [(2.0, 1000), (2.5, 1000), (2.0, 7)])
def test_a_pass_cap_ends_training_at_whichever_of_passes_and_steps_comes_first(tiny_ids, tmp_path, epochs, steps):
    dataset, ids, _ = tiny_ids
    cfg = tiny_config(
        train={"steps": steps, "epochs": epochs, "eval_every": 1000, "checkpoint_every": 1000, "log_every": 1}
    )
    data, _, model = prepare(dataset, ids, cfg)
    batches_per_epoch = len(length_bucketed_batches(data.train.lengths, cfg.train.batch_size, cfg.train.seed, 0))
    assert 7 < 2 * batches_per_epoch < 1000  # both kinds of end are reachable
    train(model, data, cfg.train, cfg.eval, tmp_path)
    steps_taken = [int(row["step"]) for row in read_csv(tmp_path / "train_log.csv")]
    assert steps_taken[-1] == min(steps, math.ceil(epochs * batches_per_epoch))
    assert steps_taken == list(range(1, steps_taken[-1] + 1))


def test_patience_stops_training_and_a_restart_trains_no_further(tiny_ids, tmp_path):
    dataset, ids, _ = tiny_ids  # an lr too small to move validation: only the first evaluation is a new best
    cfg = tiny_config(
        train={"steps": 1000, "lr": 1e-12, "eval_every": 5, "patience": 2, "checkpoint_every": 1000, "log_every": 5}
    )
    data, _, model = prepare(dataset, ids, cfg)
    summary = train(model, data, cfg.train, cfg.eval, tmp_path)
    assert [int(row["step"]) for row in read_csv(tmp_path / "valid_log.csv")] == [5, 10, 15]
    assert (summary["steps"], summary["best_step"]) == (15, 5)
    assert train(model, data, cfg.train, cfg.eval, tmp_path)["steps_this_run"] == 0  # resumed out of patience


def test_the_tuned_recipe_caps_passes_and_the_tiny_preset_counts_steps():
    assert (
        preset_config("beauty", "tuned").train.epochs == 30.0 and preset_config("beauty", "paper").train.epochs == 0.0
    )
    tuned, paper, rpg = (
        preset_config("beauty", "tuned"),
        preset_config("beauty", "paper"),
        preset_config("beauty", "tuned", "rpg"),
    )
    assert tuned.train.members == paper.train.members == rpg.train.members == 1
    # The default re-ranks TIGER's beam with SASRec; the paper's TIGER and RPG rank alone.
    assert (tuned.fusion.item_model, paper.fusion.item_model, rpg.fusion.item_model) == ("sasrec", "none", "none")
    assert preset_config("tiny", "tuned").train.epochs == 0.0  # its budget is in steps
    assert preset_config("beauty", "tuned", "rpg").train.epochs == 100.0  # a model kind's own cap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda_restores_the_gpu_random_state(tiny_ids, tmp_path):
    """On a GPU dropout draws from the device's generator: a resumed run must continue its stream.

    Kernels may differ in summation order between runs, so the resumed model is compared with the
    uninterrupted one relative to a resume whose GPU random state was replaced."""
    dataset, ids, _ = tiny_ids
    cfg = tiny_config(train={"eval_every": 1000, "checkpoint_every": 10, "log_every": 10, "steps": 60, "bf16": "off"})
    half = tiny_config(train={**vars(cfg.train), "steps": 30})
    assert cfg.model.dropout > 0
    whole = _train(dataset, ids, cfg, tmp_path / "whole")
    _train(dataset, ids, half, tmp_path / "split")
    shutil.copytree(tmp_path / "split", tmp_path / "scrambled")
    checkpoint = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert "cuda_rng" in checkpoint
    torch.cuda.manual_seed(12345)
    checkpoint["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(checkpoint, tmp_path / "scrambled" / CHECKPOINT)
    resumed = _train(dataset, ids, cfg, tmp_path / "split")
    scrambled = _train(dataset, ids, cfg, tmp_path / "scrambled")

    def distance(a, b):
        return max((a[name].float() - b[name].float()).abs().max().item() for name in a)

    assert distance(resumed, whole) <= distance(scrambled, whole) / 100, (
        distance(resumed, whole),
        distance(scrambled, whole),
    )


def test_ddp_with_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "tigerrec.cli",
        "run",
        "tiny",
        "--out",
        str(tmp_path),
        "--scheme",
        "rqkmeans",
        "--steps",
        "40",
        "--set",
        "train.eval_every=40",
        "--set",
        "train.log_every=10",
        # a time budget with a cooldown: the processes share process 0's clock each step
        "--set",
        "train.max_minutes=30",
        "--set",
        "train.cooldown_fraction=0.2",
        # two ensemble members, and the item model that re-ranks their beam, trained by process 0 alone
        "--set",
        "train.members=2",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2 and metrics["training"]["steps"] == 40
    assert load_file(str(tmp_path / "model.safetensors"))
    # The tuned recipe's second model: every process agrees to train it (process 0's clock decides).
    assert [m["steps"] for m in metrics["training"]["members"]] == [40, 40]
    assert load_file(str(tmp_path / "members" / "1" / "model.safetensors"))


def test_the_budget_spent_is_the_further_along_of_steps_and_minutes():
    from tigerrec.config import TrainConfig
    from tigerrec.train import budget_spent

    timed = TrainConfig(steps=100, max_minutes=10)
    assert budget_spent(50, timed, 2.0) == pytest.approx(0.5)  # steps ahead
    assert budget_spent(10, timed, 8.0) == pytest.approx(0.8)  # the clock ahead
    assert budget_spent(200, timed, 1.0) == budget_spent(1, timed, 30.0) == 1.0  # never past the end
    assert budget_spent(25, TrainConfig(steps=100), 99.0) == pytest.approx(0.25)  # no time limit: steps alone


def test_lr_schedule_is_rsqrt_with_an_optional_linear_cooldown():
    from tigerrec.config import TrainConfig
    from tigerrec.train import lr_factor

    paper = TrainConfig(steps=100_000, warmup_steps=10_000)
    assert lr_factor(1, paper) == lr_factor(10_000, paper) == 1.0
    assert lr_factor(40_000, paper) == pytest.approx(0.5)
    assert lr_factor(100_000, paper) == pytest.approx(0.1**0.5)

    cooled = TrainConfig(steps=100_000, warmup_steps=10_000, cooldown_fraction=0.2)
    assert lr_factor(40_000, cooled) == lr_factor(40_000, paper)  # before the cooldown: unchanged
    assert lr_factor(90_000, cooled) == pytest.approx(lr_factor(90_000, paper) * 0.5)
    assert lr_factor(100_000, cooled) == 0.0
    # Under a time budget the clock can start the cooldown first.
    timed = TrainConfig(steps=100_000, warmup_steps=10_000, cooldown_fraction=0.2, max_minutes=60)
    assert lr_factor(5_000, timed, elapsed_minutes=30) == 1.0
    assert lr_factor(5_000, timed, elapsed_minutes=54) == pytest.approx(0.5)
    assert lr_factor(5_000, timed, elapsed_minutes=61) == 0.0


def test_constant_schedule_warms_up_then_holds_until_its_cooldown():
    from tigerrec.config import TrainConfig
    from tigerrec.train import lr_factor

    constant = TrainConfig(steps=1_000, warmup_steps=10, schedule="constant")
    assert lr_factor(5, constant) == 0.5 and lr_factor(900, constant) == 1.0
    cooled = TrainConfig(steps=1_000, warmup_steps=10, schedule="constant", cooldown_fraction=0.2)
    assert lr_factor(700, cooled) == 1.0 and lr_factor(900, cooled) == pytest.approx(0.5)
    # The clock decides when it is further along than the steps.
    timed = TrainConfig(steps=1_000_000, warmup_steps=0, schedule="constant", cooldown_fraction=0.2, max_minutes=20)
    assert lr_factor(10, timed, elapsed_minutes=19) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(1, TrainConfig(schedule="step"))


def test_item_history_model_learns_the_tiny_dataset_to_recall_one(tmp_path):
    """history=items: a causal encoder over pooled item tokens, every position of a window a target."""
    cfg = tiny_config(
        model={"history": "items"},
        train={
            "schedule": "constant",
            "warmup_steps": 20,
            "cooldown_fraction": 0.2,
            "batch_size": 32,
            "steps": 500,
            "lr": 0.02,
            "eval_every": 500,
            "checkpoint_every": 500,
        },
    )
    metrics, data = run_and_check_memorised(cfg, tmp_path)
    assert metrics["test"]["recall@10"] >= 0.9 and metrics["valid"]["recall@10"] >= 0.9
    # Samples count targets: every item after a user's first training item is one per epoch.
    per_epoch = int(data.train.lengths.sum())
    assert metrics["training"]["samples"] > 5 * per_epoch
    assert read_csv(tmp_path / "valid_log.csv")[-1]["minutes"] > 0


def test_tuned_recipe_pooled_history_model_learns_the_tiny_dataset_to_recall_one(tmp_path):
    """The default recipe reads history=pooled: one token per history item, the paper's examples and
    bidirectional encoder."""
    # One model: the ensemble's members are another test's (test_members).
    cfg = tiny_config("tuned", train={"steps": 600, "eval_every": 600, "checkpoint_every": 600, "members": 1})
    assert cfg.model.history == "pooled" and cfg.model.embed_init == "codebooks" and cfg.train.cooldown_fraction == 0.2
    metrics, data = run_and_check_memorised(cfg, tmp_path)
    assert metrics["test"]["recall@10"] >= 0.95 and metrics["valid"]["recall@10"] >= 0.95
    assert (
        data.tokenizer.encoder_input(torch.from_numpy(data.train.histories[:3]), torch.zeros(3, dtype=torch.long)).dim()
        == 3
    )


def test_eval_users_scores_one_fixed_sample_of_users_in_both_splits(tiny_run):
    from tigerrec.pipeline import load_trained_run
    from tigerrec.train import evaluate_splits

    cfg, _, data, test, model = load_trained_run(tiny_run)
    cfg = cfg.override(["eval.users=40"])
    evals, ranks = evaluate_splits(model, data, test, cfg)
    assert evals["valid"]["users"] == evals["test"]["users"] == 40
    assert all(len(r) == 40 for r in ranks.values())
    again, _ = evaluate_splits(model, data, test, cfg)
    assert again["test"]["recall@10"] == evals["test"]["recall@10"]
