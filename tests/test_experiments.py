import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from tigerrec.baselines import rank_by_profile
from tigerrec.cli import main
from tigerrec.data import leave_one_out, make_tiny
from tigerrec.evaluate import METRICS
from tigerrec.experiments import (
    category_entropy,
    choose_pull,
    cold_start_ids,
    epsilon_rank,
    item_categories,
    pick_unseen,
    unseen_siblings,
    without_items,
)
from tigerrec.new_items import guided_profiles, history_profiles, predicted_profiles
from tigerrec.pipeline import build_semantic_ids, embed_items
from tigerrec.quantize import load_quantizer
from tigerrec.rundir import IDS_DIR, QUANTIZER_FILE

# Fast settings for the smoke runs of the commands (tiny data, a few dozen steps).
# One model of the default recipe (its ensemble is test_members'): the experiments rank with any model.
SMOKE = ["--scheme", "rqkmeans", "--steps", "30", "--set", "train.eval_every=30", "--set", "train.log_every=10"]
SMOKE += ["--set", "train.members=1"]


# ------------------------------------------------------------------ epsilon rule

SEEN = np.array([[0, 1, 2]])  # seen items of three generated IDs, best first
UNSEEN = np.array([[[10, 11], [-1, -1], [12, 10]]])  # unseen items sharing each ID's first codes


def test_epsilon_zero_gives_only_seen_items_in_generated_order():
    assert epsilon_rank(SEEN, UNSEEN, 3, 0.0).tolist() == [[0, 1, 2]]


def test_epsilon_one_puts_unseen_siblings_before_their_seen_item():
    assert epsilon_rank(SEEN, UNSEEN, 3, 1.0).tolist() == [[10, 11, 0]]
    assert epsilon_rank(SEEN, UNSEEN, 6, 1.0).tolist() == [[10, 11, 0, 1, 12, 2]]  # 10 is not repeated
    # A generated ID of an unseen item (no seen item has it) brings that item and its siblings.
    assert epsilon_rank(np.array([[-1, 0]]), np.array([[[13, 14], [-1, -1]]]), 2, 1.0).tolist() == [[13, 14]]
    assert epsilon_rank(np.array([[-1, 0]]), np.array([[[13, 14], [-1, -1]]]), 2, 0.0).tolist() == [[0, -1]]


def test_epsilon_caps_unseen_items_at_ceil_epsilon_k():
    assert epsilon_rank(SEEN, UNSEEN, 5, 0.4).tolist() == [[10, 11, 0, 1, 2]]  # cap 2: 12 skipped
    assert epsilon_rank(SEEN, UNSEEN, 5, 0.2).tolist() == [[10, 0, 1, 2, -1]]  # cap 1; candidates run out
    assert epsilon_rank(SEEN, UNSEEN, 1, 0.1).tolist() == [[10]]  # any epsilon > 0 admits one
    for epsilon in (0.0, 0.1, 0.2, 0.4, 1.0):
        for k in range(1, 7):
            ranked = epsilon_rank(SEEN, UNSEEN, k, epsilon)
            assert (ranked >= 10).sum() <= math.ceil(epsilon * k - 1e-9)


def test_unseen_siblings_share_all_but_the_last_code():
    from tigerrec.semantic_ids import SemanticIDs

    ids = SemanticIDs.from_codes(["a", "b"], np.array([[1, 2, 3], [4, 5, 6]]), 8)
    ids = ids.add_items(["c", "d", "e"], np.array([[1, 2, 3], [1, 2, 3], [7, 7, 7]]))
    generated = np.array([[[1, 2, 3, 0], [4, 5, 6, 0]]])
    assert unseen_siblings(generated, ids, 2).tolist() == [[[2, 3], [-1, -1]]]


# ------------------------------------------------------------------ diversity


def test_category_entropy_in_nats():
    entropy = category_entropy(np.array([[0, 0, 0, 0], [0, 1, 0, 1], [0, 1, -1, -1], [0, 1, 2, 3]]))
    assert entropy == pytest.approx([0.0, math.log(2), math.log(2), math.log(4)])


def test_item_categories_level_and_leaf():
    meta = [
        {"categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Bath"]]},
        {"categories": [["Beauty", "Makeup"]]},
        {"categories": [["Beauty", "Skin Care", "Body"]]},
        {},
    ]
    level2 = item_categories(meta, 2)
    assert level2[0] == level2[2] and len(set(level2.tolist())) == 3
    leaf = item_categories(meta, 0)
    assert len(set(leaf.tolist())) == 4


# ------------------------------------------------------------------ cold start split


def test_cold_start_split_and_ids(tmp_path):
    cfg = tiny_config()
    dataset = make_tiny()
    split = leave_one_out(dataset)
    unseen = pick_unseen(split.test_target, 0.05, seed=0)
    assert np.isin(unseen, split.test_target).all()
    assert len(unseen) == round(0.05 * len(np.unique(split.test_target)))
    assert (pick_unseen(split.test_target, 0.05, seed=0) == unseen).all()

    seen = without_items(dataset, unseen)
    unseen_ids = {dataset.item_ids[i] for i in unseen}
    assert not unseen_ids & set(seen.item_ids) and seen.num_items == dataset.num_items - len(unseen)
    for user, seq in zip(seen.user_ids, seen.sequences):
        original = [dataset.item_ids[i] for i in dataset.sequences[dataset.user_ids.index(user)]]
        assert [seen.item_ids[i] for i in seq] == [i for i in original if i not in unseen_ids]

    build_semantic_ids(seen, cfg, tmp_path / IDS_DIR)  # the quantiser is fit on seen items only
    ids, to_row, embeddings = cold_start_ids(dataset, unseen, cfg, tmp_path)
    assert ids.item_ids[: seen.num_items] == seen.item_ids  # seen items first, IDs unchanged
    assert [ids.item_ids[to_row[i]] for i in range(dataset.num_items)] == dataset.item_ids
    assert len(np.unique(ids.codes, axis=0)) == dataset.num_items
    quantizer = load_quantizer(tmp_path / IDS_DIR / QUANTIZER_FILE)
    full, _, _ = embed_items(dataset, cfg)
    assert np.array_equal(ids.codes[seen.num_items :, :-1], quantizer.encode(full[unseen]))
    assert np.allclose(embeddings[to_row], full)
    # An unseen item's last code continues after the seen items that share its first codes.
    for row in range(seen.num_items, dataset.num_items):
        same = (ids.codes[:row, :-1] == ids.codes[row, :-1]).all(1)
        assert ids.codes[row, -1] == same.sum()


# ------------------------------------------------------------------ the commands on tiny data


@pytest.fixture(scope="module")
def tiny_tiger(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiger")
    assert main(["run", "tiny", "--out", str(run_dir), *SMOKE]) == 0
    return run_dir


def test_the_default_run_reranks_its_beam_with_an_item_model(tiny_tiger):
    """The default recipe trains SASRec after TIGER and reports the fused ranking, with TIGER's own beside it."""
    from tigerrec.evaluate import load_target_ranks
    from tigerrec.recommend import Recommender

    metrics = json.loads((tiny_tiger / "metrics.json").read_text())
    assert metrics["config"]["fusion"]["item_model"] == "sasrec" and (tiny_tiger / "item_model.safetensors").is_file()
    assert (
        metrics["training"]["item_model"]["selection_metric"] == "ndcg@10" and metrics["timings"]["item_model_seconds"]
    )
    alone = metrics["test"]["generative_alone"]
    assert set(alone) == {"history_ranked", "history_excluded"} and set(metrics["valid"]["generative_alone"]) >= set(
        METRICS
    )
    ranks = load_target_ranks(tiny_tiger / "test_target_ranks.npz")
    assert set(ranks) == {"history_ranked", "history_excluded"} | {f"generative_alone/{p}" for p in alone}
    # The run asked again reuses both models, and its metrics stand.
    stamp = (tiny_tiger / "item_model.safetensors").stat().st_mtime_ns
    assert main(["run", "tiny", "--out", str(tiny_tiger), *SMOKE]) == 0
    assert (tiny_tiger / "item_model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((tiny_tiger / "metrics.json").read_text())["test"] == metrics["test"]
    # Serving ranks fused as the evaluation does: the run's test users get the lists whose ranks it saved.
    rec = Recommender.load(tiny_tiger, device="cpu")
    assert rec.fusion is not None
    dataset = make_tiny()
    split = leave_one_out(dataset)
    histories = [[dataset.item_ids[i] for i in history] for history in split.test_history]
    for user, results in enumerate(rec.recommend_batch(histories, k=10, exclude_seen=True)):
        served = [r["item_id"] for r in results]
        target = dataset.item_ids[split.test_target[user]]
        assert (served.index(target) if target in served else -1) == ranks["history_excluded"][user]


def test_a_changed_item_model_setting_is_refused_without_overwrite(tiny_tiger, capsys):
    assert main(["run", "tiny", "--out", str(tiny_tiger), *SMOKE, "--set", "sasrec.hidden=32"]) == 2
    assert "sasrec=" in capsys.readouterr().err and (tiny_tiger / "item_model.safetensors").is_file()


def test_baselines_read_the_runs_item_model_when_its_settings_match(tmp_path, tiny_tiger):
    from safetensors.torch import load_file

    assert main(["experiment", "baselines", "tiny", "--out", str(tmp_path), "--run-dir", str(tiny_tiger)]) == 0
    training = _read(tmp_path, "baselines")["sasrec_training"]
    assert training["reused_from"] == str(tiny_tiger / "item_model.safetensors")
    theirs, ours = (
        load_file(str(tmp_path / "baselines" / "sasrec.safetensors")),
        load_file(str(training["reused_from"])),
    )
    assert set(theirs) == set(ours) and all(theirs[name].equal(ours[name]) for name in ours)


def _read(out, name):
    result = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.md").read_text().startswith(f"# {name}")
    return result


def test_coldstart_command(tmp_path):
    assert main(["experiment", "coldstart", "tiny", "--out", str(tmp_path), *SMOKE]) == 0
    result = _read(tmp_path, "coldstart")
    assert result["cold_test_users"] > 0 and result["unseen_items"] > 0
    epsilons = ["0", "0.1", "0.2", "0.4", "1"]
    reserved = [
        f"{method} reserved eps={e}" for method in ("TIGER", "Semantic_KNN", "TIGER guided") for e in epsilons[1:]
    ]
    assert set(result["recall"]) == {
        "Semantic_KNN",
        *reserved,
        *(f"TIGER {rule} eps={e}" for rule in ("prefix", "scored") for e in epsilons),
    }
    # Reserved slots hold ceil(eps * 10) unseen items in a top 10, as far as there are unseen items.
    for method in ("TIGER", "Semantic_KNN", "TIGER guided"):
        counts = [result["mean_unseen_in_top10"][f"{method} reserved eps={e}"] for e in epsilons[1:]]
        assert counts[0] == 1 and counts == sorted(counts) and all(c <= cap for c, cap in zip(counts, (1, 2, 4, 10)))
    for rule in ("prefix", "scored"):
        assert all(
            v == 0 for v in result["recall"][f"TIGER {rule} eps=0"].values()
        )  # only seen items, every target unseen
        assert result["mean_unseen_in_top10"][f"TIGER {rule} eps=0.1"] <= 1
        assert result["mean_unseen_in_top10"][f"TIGER {rule} eps=0.4"] <= 4
    assert (
        result["mean_unseen_in_top10"]["TIGER scored eps=1"] >= result["mean_unseen_in_top10"]["TIGER scored eps=0.2"]
    )
    # The guided rule's pull is one of the grid, chosen on validation users (not the test users).
    guided = result["guided"]
    by_pull = guided["validation_unseen_ndcg@10_by_pull"]
    assert guided["validation_cold_users"] > 0 and set(by_pull) == {"0", "0.25", "0.5", "0.75", "1"}
    assert by_pull[f"{guided['pull']:g}"] == max(by_pull.values())
    # Serving the run with its unseen items added gives the guided lists (one reserved slot in ten); the
    # served batches differ from the experiment's, so a near tie may fall the other way on some CPUs.
    served = _benchmark("serve_coldstart").compare(tmp_path, "tiny")
    assert served["cold_users"] == result["cold_test_users"] and served["same_list_share"] >= 0.9


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guided_profiles_move_from_the_history_towards_the_predicted_items():
    embeddings = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.9, 1.0], [1.0, 0.1, 0.0]])
    histories, predicted = [np.array([0])], np.array([[1, 2, -1]])
    log_probs = np.log(np.array([[0.25, 0.75, 1.0]]))  # the padding (-1) has no weight whatever its score
    history, predicted_profile = (
        history_profiles(embeddings, histories, 20),
        predicted_profiles(embeddings, predicted, log_probs),
    )
    assert guided_profiles(history, predicted_profile, 0.0) == pytest.approx(np.array([[1.0, 0, 0]]))
    ahead = np.array([[0.0, 0.25, 0.75]]) / np.hypot(0.25, 0.75)
    assert guided_profiles(history, predicted_profile, 1.0) == pytest.approx(ahead)
    among = np.array([False, False, False, True, True])

    def rank(pull):
        profiles = guided_profiles(history, predicted_profile, pull)
        return rank_by_profile(embeddings, profiles, histories, 2, among=among)[0].tolist()

    assert rank(0.0) == [4, 3] and rank(1.0) == [3, 4]
    candidates = np.flatnonzero(among)
    pull, by_pull = choose_pull(
        embeddings, histories, predicted, log_probs, np.array([3]), [0.0, 0.5, 1.0], candidates, 20
    )
    assert pull == 1.0 and by_pull["1"] == 1.0 and by_pull["0"] < 1.0


def test_diversity_command(tmp_path, tiny_tiger):
    assert main(["experiment", "diversity", "tiny", "--out", str(tmp_path), "--run-dir", str(tiny_tiger)]) == 0
    rows = _read(tmp_path, "diversity")["rows"]
    assert [r["temperature"] for r in rows] == [None, 1.0, 1.5, 2.0]
    assert all(0 <= r["entropy@10 (level 2)"] <= math.log(10) for r in rows)


@pytest.mark.parametrize("exclude_history", [False, True])
def test_baselines_command(tmp_path, tiny_tiger, exclude_history):
    # A run's row joins only baselines ranked as it was: the tiny run (default recipe) keeps history items out.
    with_run = ["--run-dir", str(tiny_tiger)] if exclude_history else []
    args = [
        "--set",
        "sasrec.epochs=3",
        *with_run,
        "--set",
        f"eval.exclude_history={str(exclude_history).lower()}",
    ]
    assert main(["experiment", "baselines", "tiny", "--out", str(tmp_path), *args]) == 0
    methods = _read(tmp_path, "baselines")["methods"]
    extra = {"TIGER + SASRec, fused"} if exclude_history else set()  # the default run re-ranks with SASRec
    assert set(methods) == {"MostPop", "Markov (last item)", "Semantic_KNN", "SASRec"} | extra
    protocol = "history_excluded" if exclude_history else "history_ranked"
    for m in methods.values():
        assert set(m["test_protocols"]) == {"history_excluded", "history_ranked"}
        assert all(m["test"][k] == m["test_protocols"][protocol][k] for k in METRICS)
        assert all(0 <= v <= 1 for v in m["test_protocols"]["history_ranked"].values())
    if exclude_history:  # the run kept its test target ranks: a paired interval against every baseline
        intervals = methods["TIGER + SASRec, fused"]["paired_ci95_run_minus"]
        assert set(intervals) == {"MostPop", "Markov (last item)", "Semantic_KNN", "SASRec"}
        low, high = intervals["MostPop"]["history_excluded"]["recall@10"]
        assert low <= high
        # The frontier summary pairs the run with SASRec on the same users.
        summary = _benchmark("frontier").frontier(tiny_tiger, tmp_path)
        assert summary["sasrec"]["history_excluded"] == {
            m: methods["SASRec"]["test_protocols"]["history_excluded"][m] for m in METRICS
        }
        assert (
            summary["default"]["history_ranked"]["recall@10"]
            == methods["TIGER + SASRec, fused"]["test_protocols"]["history_ranked"]["recall@10"]
        )
        low, high = summary["paired_ci95_default_minus_sasrec"]["ndcg@10"]
        assert -1 <= low <= high <= 1


@pytest.mark.parametrize("setting", ["eval.exclude_history=false", "data.backtest=1"])
def test_baselines_refuse_a_run_from_another_split_or_ranking_rule(tmp_path, tiny_tiger, capsys, setting):
    args = ["--set", "sasrec.epochs=2", "--run-dir", str(tiny_tiger), "--set", setting]
    assert main(["experiment", "baselines", "tiny", "--out", str(tmp_path), *args]) == 2
    key, value = setting.split("=")
    recorded = {"false": "true", "1": "0"}[value]
    assert (
        f"was evaluated with {key}={recorded}, these baselines with {value}; pass --set {key}={recorded}"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "baselines.json").exists()  # refused before SASRec trained


def test_ablation_command(tmp_path):
    args = [
        "--set",
        "experiment.schemes=[random, rqvae]",
        "--epochs",
        "5",
        "--steps",
        "20",
        "--set",
        "train.eval_every=20",
    ]
    assert main(["experiment", "ablation", "tiny", "--out", str(tmp_path), *args]) == 0
    variants = _read(tmp_path, "ablation")["variants"]
    assert list(variants) == ["random", "rqvae", "rqvae-no-user-token"]
    assert all(v["steps"] == 20 for v in variants.values())
    ids = [
        (tmp_path / "ablation" / name / IDS_DIR / "semantic_ids.csv").read_text()
        for name in ("rqvae", "rqvae-no-user-token")
    ]
    assert ids[0] == ids[1]  # the user-token rows share their IDs
