"""RPG: OPQ Semantic IDs, the parallel code heads, exact scoring, and a run served like TIGER's."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import run_and_check_memorised

from tigerrec.cli import build_parser, load_config, main
from tigerrec.config import EvalConfig, IDsConfig, ModelConfig, RunConfig
from tigerrec.data import make_tiny
from tigerrec.decoding import ItemFilter, rank
from tigerrec.errors import TigerrecError
from tigerrec.experiments import run_experiment
from tigerrec.presets import preset_config
from tigerrec.quantize import load_quantizer, make_quantizer
from tigerrec.recommend import Recommender
from tigerrec.report import render_report
from tigerrec.rpg import RPGModel
from tigerrec.semantic_ids import SemanticIDs
from tigerrec.sequences import Tokenizer


def clustered_embeddings(n=400, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim))
    return (centers[rng.integers(20, size=n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


# ------------------------------------------------------------------ OPQ Semantic IDs


@pytest.mark.parametrize("pca_dim", [0, 16])
def test_opq_codes_round_trip_through_save_and_load(tmp_path, pca_dim):
    x = clustered_embeddings()
    config = IDsConfig(scheme="opq", levels=8, codebook_size=16, pca_dim=pca_dim)
    quantizer = make_quantizer("opq", x.shape[1], config).fit(x)
    codes = quantizer.encode(x)
    assert codes.shape == (len(x), 8) and codes.min() >= 0 and codes.max() < 16
    assert quantizer.history[-1]["utilization"] == [1.0] * 8  # every centroid of every subspace is some item's
    quantizer.save(tmp_path / "quantizer.safetensors")
    loaded = load_quantizer(tmp_path / "quantizer.safetensors")
    assert type(loaded).__name__ == "OPQ"
    np.testing.assert_array_equal(loaded.encode(x), codes)
    np.testing.assert_array_equal(loaded.encode(x[:5]), codes[:5])  # items encode alone as in the catalogue


def test_opq_ids_are_unique_where_the_data_allows_and_repeat_without_a_collision_code(tmp_path):
    x = np.random.default_rng(0).standard_normal((400, 48)).astype(np.float32)  # 16^8 IDs to spread over
    x[1] = x[0]  # two items with the same text
    config = IDsConfig(scheme="opq", levels=8, codebook_size=16)
    codes = make_quantizer("opq", x.shape[1], config).fit(x).encode(x)
    ids = SemanticIDs.from_codes([f"i{n}" for n in range(len(x))], codes, 16, collision_code=False)
    assert ids.codes.shape == (len(x), 8)  # no collision code: the ID is the codes
    assert (ids.codes[0] == ids.codes[1]).all()
    metrics = ids.metrics()
    assert metrics["unique_prefix_share"] == round(1 - 2 / len(x), 4) and metrics["max_collision_group"] == 2
    assert metrics["collision_group_sizes"] == {"1": len(x) - 2, "2": 1} and not metrics["unique_ids"]
    ids.save(tmp_path)
    again = SemanticIDs.load(tmp_path, 16, collision_code=False)
    assert (again.codes == ids.codes).all() and not again.collision_code
    with pytest.raises(TigerrecError, match="not unique"):  # TIGER's IDs must be unique
        SemanticIDs.load(tmp_path, 16)
    more = again.add_items(["new"], codes[:1])
    assert more.codes.shape == (len(x) + 1, 8) and (more.codes[-1] == codes[0]).all()


def test_opq_needs_as_many_items_as_centroids_and_dimensions():
    with pytest.raises(ValueError, match="at least ids.codebook_size=256 items"):
        make_quantizer("opq", 48, IDsConfig(scheme="opq", levels=8)).fit(clustered_embeddings(n=100))
    # faiss's OPQ would corrupt memory here; a PCA makes the catalogue fit
    small = IDsConfig(scheme="opq", levels=8, codebook_size=16)
    with pytest.raises(
        ValueError, match=r"as many items as dimensions to rotate \(48\), got 40 items; set ids.pca_dim below 40"
    ):
        make_quantizer("opq", 48, small).fit(clustered_embeddings(n=40))
    small.pca_dim = 16
    assert make_quantizer("opq", 48, small).fit(clustered_embeddings(n=40)).encode(
        clustered_embeddings(n=40)
    ).shape == (40, 8)


# ------------------------------------------------------------------ the model and its scores


def tiny_model(use_user_token=True, seed=0):
    torch.manual_seed(seed)
    codes = np.random.default_rng(seed).integers(0, 8, size=(30, 5))
    codes[7] = codes[3]  # two items sharing an ID
    tokenizer = Tokenizer(codes, 8, user_buckets=5, max_history=6, use_user_token=use_user_token, history="items")
    cfg = ModelConfig(
        kind="rpg",
        history="items",
        d_model=16,
        num_heads=2,
        head_dim=8,
        d_ff=32,
        encoder_layers=2,
        use_user_token=use_user_token,
    )
    return RPGModel(cfg, tokenizer.vocab_size, tokenizer.item_codes, 8).eval(), tokenizer


@pytest.mark.parametrize("use_user_token", [True, False])
def test_item_score_is_the_sum_of_its_code_log_probabilities(use_user_token):
    model, tokenizer = tiny_model(use_user_token)
    histories = torch.tensor([[1, 2, 3, -1], [4, -1, -1, -1], [5, 6, 7, 8]])
    users = torch.tensor([tokenizer.user_token("u1"), tokenizer.user_token(None), tokenizer.user_token("u2")])
    tokens = tokenizer.encoder_input(histories, users)
    with torch.no_grad():
        scores = model.item_scores(tokens)
        states = model.encode(tokens)
    codes = tokenizer.item_codes.numpy()
    offset = int(use_user_token)
    for row, length in enumerate([3, 1, 4]):
        log_probs = model.code_logits(states[row, offset + length - 1][None]).log_softmax(-1)[0].detach().numpy()
        for item in range(len(codes)):
            expected = sum(log_probs[position, code] for position, code in enumerate(codes[item]))
            assert scores[row, item].item() == pytest.approx(expected, abs=1e-4)
    assert torch.isfinite(scores).all()  # the anonymous user's PAD token is no fully masked row
    assert torch.equal(scores[:, 3], scores[:, 7])  # the same ID, the same score

    out = rank(model, tokens, 10)
    assert torch.equal(out.scores, scores.topk(10, dim=1).values)
    assert torch.equal(out.codes, tokenizer.item_codes[out.items])
    everything = rank(model, tokens, 40)  # more than the 30 items
    assert (everything.items[:, 30:] == -1).all() and sorted(everything.items[0, :30].tolist()) == list(range(30))
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sampled = rank(model, tokens, 10, temperature=2.0, generator=generator())
    assert torch.equal(sampled.items, rank(model, tokens, 10, temperature=2.0, generator=generator()).items)
    assert torch.equal(sampled.scores, scores.gather(1, sampled.items))
    assert all(len(set(row)) == 10 for row in sampled.items.tolist())
    allowed = torch.zeros(3, 30, dtype=torch.bool)
    allowed[:, ::3] = True  # 10 items
    allowed[1] = False
    allowed[1, [2, 4]] = True
    filtered = rank(model, tokens, 5, allowed=ItemFilter.from_mask(allowed))
    best = scores.masked_fill(~allowed, float("-inf")).topk(5, dim=1)
    assert torch.equal(filtered.items[[0, 2]], best.indices[[0, 2]])
    assert sorted(filtered.items[1, :2].tolist()) == [2, 4] and (filtered.items[1, 2:] == -1).all()


def test_graph_decoding_links_items_with_alike_ids_and_finds_exactly_scored_items():
    model, tokenizer = tiny_model()
    model.use_graph_decoding(neighbors=6, steps=2)
    graph = model.graph
    assert graph.shape == (30, 6)
    # Brute force: the similarity of two items is the sum over positions of their codes' cosines.
    m, size = model.id_length, model.codebook_size
    codes_embedded = torch.nn.functional.normalize(model.embed.weight[2 : 2 + m * size].view(m, size, -1), dim=-1)
    item_vectors = codes_embedded[torch.arange(m), tokenizer.item_codes].flatten(1)  # (30, m * d)
    similarity = item_vectors @ item_vectors.T
    similarity.fill_diagonal_(float("-inf"))
    for item in range(30):
        assert item not in graph[item].tolist() and len(set(graph[item].tolist())) == 6
        sixth_best = similarity[item].topk(6).values[-1]
        assert (similarity[item, graph[item]] >= sixth_best - 1e-4).all()
    assert 3 in graph[7].tolist() and 7 in graph[3].tolist()  # the same ID: the most alike

    histories = torch.tensor([[1, 2, 3, -1], [4, -1, -1, -1], [5, 6, 7, 8]])
    tokens = tokenizer.encoder_input(histories, torch.full((3,), tokenizer.user_token("u1")))
    with torch.no_grad():
        exact = model.item_scores(tokens)
    out = rank(model, tokens, 5, beam_size=8)
    assert (out.items >= 0).all() and all(len(set(row)) == 5 for row in out.items.tolist())
    assert torch.allclose(out.scores, exact.gather(1, out.items), atol=1e-5)  # found approximately, scored exactly
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    assert torch.equal(out.items, rank(model, tokens, 5, beam_size=8).items)  # the same start each call
    allowed = torch.zeros(3, 30, dtype=torch.bool)
    allowed[:, :15] = True
    assert (rank(model, tokens, 5, beam_size=8, allowed=ItemFilter.from_mask(allowed)).items < 15).all()
    # On a complete graph one step reaches every item: the exact top k.
    model.use_graph_decoding(neighbors=29, steps=1)
    assert torch.allclose(rank(model, tokens, 5, beam_size=5).scores, exact.topk(5, dim=1).values, atol=1e-5)
    model.use_graph_decoding(neighbors=0, steps=1)
    assert model.graph is None and torch.equal(rank(model, tokens, 5).scores, exact.topk(5, dim=1).values)


def test_training_rows_predict_the_next_item_from_the_items_up_to_their_position():
    model, tokenizer = tiny_model()
    histories = torch.tensor([[1, 2, 3, 4], [5, 6, -1, -1]])
    tokens = tokenizer.encoder_input(histories, torch.tensor([tokenizer.user_token("a"), tokenizer.user_token("b")]))
    decoder_rows = torch.zeros(2 * 4, 5, dtype=torch.long)  # as TrainData.batch: one row per history position
    with torch.no_grad():
        logits = model(tokens, decoder_rows)
        assert logits.shape == (8, 5, 8)
        # Row (b, p) is what scoring reads after the history up to p.
        for b, p in [(0, 0), (0, 3), (1, 1)]:
            cut = torch.where(torch.arange(4) <= p, histories[b], -1)[None]
            shorter = tokenizer.encoder_input(cut, torch.tensor([tokenizer.user_token("ab"[b])]))
            expected = model.item_scores(shorter)[0]
            got = logits[b * 4 + p].log_softmax(-1)
            scores = sum(got[position, tokenizer.item_codes[:, position]] for position in range(5))
            torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ settings


def test_rpg_settings_are_one_flag_and_checked():
    beauty = preset_config("beauty", model="rpg").validate()
    assert (beauty.model.kind, beauty.ids.scheme, beauty.ids.levels, beauty.model.history) == (
        "rpg",
        "opq",
        16,
        "items",
    )
    assert (beauty.model.input_dropout, beauty.train.epochs) == (0.5, 100.0)
    assert preset_config("toys", model="rpg").ids.levels == 16 and preset_config("sports", model="rpg").ids.levels == 16
    args = build_parser().parse_args(["run", "beauty", "--out", "x", "--model", "rpg", "--set", "train.max_minutes=60"])
    cfg = load_config(args, "beauty")
    assert cfg.model.kind == "rpg" and cfg.ids.pca_dim == 128 and cfg.train.max_minutes == 60
    assert load_config(build_parser().parse_args(["run", "beauty", "--out", "x"]), "beauty").model.kind == "tiger"
    with pytest.raises(TigerrecError, match="model.kind=rpg needs ids.scheme=opq.*--model rpg"):
        RunConfig().override(["model.kind=rpg"]).validate()
    with pytest.raises(TigerrecError, match="model.kind=rpg needs model.history=items"):
        RunConfig().override(["model.kind=rpg", "ids.scheme=opq"]).validate()
    with pytest.raises(
        TigerrecError, match="model.kind=tiger needs ids.scheme rqvae, rqkmeans, lsh or random .* got ids.scheme=opq"
    ):
        RunConfig().override(["ids.scheme=opq"]).validate()
    with pytest.raises(TigerrecError, match="model.kind must be one of tiger, rpg"):
        RunConfig().override(["model.kind=gpt"]).validate()
    with pytest.raises(TigerrecError, match="ids.codebook_size must be a power of two with ids.scheme=opq"):
        beauty.override(["ids.codebook_size=200"]).validate()
    with pytest.raises(TigerrecError, match="eval.decoding=graph is not for model.kind=tiger"):
        RunConfig().override(["eval.decoding=graph"]).validate()
    with pytest.raises(TigerrecError, match="eval.decoding"):
        preset_config("tiny", model="rpg").override(["eval.decoding=beam"]).validate()
    with pytest.raises(TigerrecError, match="ids.pca_dim=128 applies to ids.scheme=opq only"):
        RunConfig().override(["ids.pca_dim=128"]).validate()
    with pytest.raises(TigerrecError, match="experiment ablation trains model.kind=rpg on each ID scheme"):
        run_experiment("ablation", "tiny", preset_config("tiny", model="rpg"), "unused")


# ------------------------------------------------------------------ a run, end to end


@pytest.fixture(scope="module")
def rpg_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rpg_run")
    cfg = preset_config("tiny", "paper", model="rpg")
    metrics, data = run_and_check_memorised(cfg, run_dir)
    return run_dir, metrics, data


def test_rpg_learns_the_tiny_dataset(rpg_run):
    run_dir, metrics, data = rpg_run
    assert data.trie is None and metrics["config"]["model"]["kind"] == "rpg"
    assert metrics["test"]["recall@10"] >= 0.9 and metrics["valid"]["recall@10"] >= 0.9
    assert metrics["semantic_ids"]["scheme"] == "opq" and len(metrics["semantic_ids"]["utilization"]) == 8
    header = (run_dir / "ids" / "semantic_ids.csv").read_text().splitlines()[0]
    assert header == "item_id," + ",".join(f"c{i}" for i in range(1, 9))  # 8 codes, no collision code


def test_coldstart_experiment_scores_unseen_items_with_rpg(tmp_path):
    args = ["--model", "rpg", "--steps", "100", "--set", "train.eval_every=100", "--out", str(tmp_path)]
    assert main(["experiment", "coldstart", "tiny", *args]) == 0
    result = json.loads((tmp_path / "coldstart.json").read_text())
    assert result["model"] == "rpg" and "generated_ids_with_unseen_siblings" not in result  # no prefix rule
    reserved = [
        f"{method} reserved eps={e}"
        for method in ("RPG", "Semantic_KNN", "RPG guided")
        for e in ("0.1", "0.2", "0.4", "1")
    ]
    assert set(result["recall"]) == {
        "Semantic_KNN",
        *reserved,
        *(f"RPG scored eps={e}" for e in ("0", "0.1", "0.2", "0.4", "1")),
    }
    assert all(v == 0 for v in result["recall"]["RPG scored eps=0"].values())
    assert result["mean_unseen_in_top10"]["RPG scored eps=0.2"] <= 2
    assert result["mean_unseen_in_top10"]["RPG reserved eps=0.1"] == 1  # RPG scores every unseen item
    assert result["mean_unseen_in_top10"]["RPG guided reserved eps=0.4"] == 4


def test_rpg_scores_added_items_from_their_codes_and_decodes_by_graph(rpg_run, tmp_path):
    run_dir = shutil.copytree(rpg_run[0], tmp_path / "run")
    recommender = Recommender.load(run_dir, device="cpu")
    twin = recommender.item("item4")
    recommender.add_items(
        {"twin": {key: value for key, value in twin.items() if key not in ("item_id", "semantic_id")}}
    )
    assert recommender.item("twin")["semantic_id"] == twin["semantic_id"]  # RPG's IDs: no collision code
    both = recommender.recommend(["item1", "item2"], k=2, only=["twin", "item4"])
    assert {r["item_id"] for r in both} == {"twin", "item4"} and both[0]["score"] == pytest.approx(both[1]["score"])
    exact = [r["item_id"] for r in recommender.recommend(["item1", "item2"], k=10)]
    recommender.model.configure_decoding(EvalConfig(decoding="graph", graph_neighbors=30, graph_steps=3))
    assert recommender.model.graph.shape == (recommender.num_items, 30)
    graph = [r["item_id"] for r in recommender.recommend(["item1", "item2"], k=10)]
    assert len(set(graph) & set(exact)) >= 8  # 121 items: the walk finds nearly all of the exact top 10


def test_recommender_cli_http_and_report_take_an_rpg_run(rpg_run, capsys):
    run_dir, _, _ = rpg_run
    recommender = Recommender.load(run_dir, device="cpu")
    assert recommender.model.kind == "rpg" and recommender.trie is None
    dataset = make_tiny()
    hits = 0
    for seq in dataset.sequences[:20]:
        history = [dataset.item_ids[i] for i in seq[:-1]]
        results = recommender.recommend(history, k=10)
        ids = [r["item_id"] for r in results]
        assert len(ids) == len(set(ids)) == 10 and not set(ids) & set(history)
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) and s <= 0 for s in scores)
        assert all(len(r["semantic_id"]) == 8 for r in results)
        hits += dataset.item_ids[seq[-1]] in ids
    assert hits >= 15
    history = [dataset.item_ids[i] for i in dataset.sequences[0][:4]]
    batch = recommender.recommend_batch([history, history[:1]], ["user0", None], k=5)
    alone = recommender.recommend(history[:1], k=5)
    assert [r["item_id"] for r in batch[1]] == [r["item_id"] for r in alone]
    assert [r["score"] for r in batch[1]] == pytest.approx([r["score"] for r in alone], abs=1e-4)
    sampled = recommender.recommend(history, k=8, temperature=1.5, seed=3)
    assert sampled == recommender.recommend(history, k=8, temperature=1.5, seed=3) and len(sampled) == 8
    assert len(recommender.recommend(history, k=recommender.max_k, exclude_seen=False)) == recommender.max_k

    assert (
        main(["recommend", str(run_dir), "--history", ",".join(history), "-k", "3", "--json", "--device", "cpu"]) == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 3

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tigerrec.serve import create_app

    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    assert client.get("/health").json()["model"] == "rpg"
    response = client.post("/recommend", json={"history": history, "k": 4})
    assert response.status_code == 200 and len(response.json()["recommendations"]) == 4

    page = render_report(run_dir)
    assert "RPG" in page and "every item scored exactly" in page and "Items sharing the same whole ID" in page
