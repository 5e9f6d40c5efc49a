"""The contract every registered model kind keeps: trained by ``run``, it recommends, serves, saves and
loads, and its config reads back. A dummy kind registered here alone (``MeanModel``) passes it too: the
``SequenceModel`` interface and ``registry.register`` are all a new kind needs."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from tigerrec import registry
from tigerrec.config import MODEL_KINDS, ModelKind, RunConfig
from tigerrec.data import make_tiny
from tigerrec.decoding import Generated
from tigerrec.model import SequenceModel, TigerEnsemble
from tigerrec.pipeline import load_trained_run, run
from tigerrec.presets import preset_config
from tigerrec.recommend import Recommender
from tigerrec.rundir import read_run_config
from tigerrec.sequences import PAD
from tigerrec.train import evaluate_examples, read_csv

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tigerrec.serve import create_app  # noqa: E402


class MeanModel(SequenceModel):
    """A trivial kind: the mean of the history's token embeddings, one linear head for every code of the
    next item, each item of the catalogue scored by the sum of its codes' log-probabilities."""

    kind = "mean"

    def __init__(self, vocab_size: int, item_codes: torch.Tensor, codebook_size: int, d_model: int):
        super().__init__()
        self.id_length, self.codebook_size = item_codes.shape[1], codebook_size
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.head = nn.Linear(d_model, self.id_length * codebook_size)
        self.register_buffer("item_codes", item_codes.clone(), persistent=False)

    @classmethod
    def build(cls, tokenizer, cfg, codebooks=None):
        return cls(tokenizer.vocab_size, tokenizer.item_codes, tokenizer.codebook_size, cfg.model.d_model)

    @property
    def num_items(self) -> int:
        return len(self.item_codes)

    def forward(self, tokens, decoder_tokens):
        vectors, mask = self.embed_input(tokens)
        present = (mask[:, 0, 0] == 0).unsqueeze(-1)
        pooled = (vectors * present).sum(1) / present.sum(1).clamp(min=1)
        return self.head(pooled).view(len(tokens), self.id_length, self.codebook_size)

    def set_catalogue(self, item_codes, cfg):
        self.item_codes = item_codes.to(self.item_codes.device)

    @torch.no_grad()
    def rank(
        self, tokens, k, trie=None, beam_size=None, constrained=True, temperature=None, generator=None, allowed=None
    ):
        log_probs = self(tokens, None).float().log_softmax(-1)
        scores = sum(log_probs[:, p].index_select(1, self.item_codes[:, p]) for p in range(self.id_length))
        if allowed is not None:
            scores = scores.masked_fill(~allowed.mask(scores.shape[1], scores.device), float("-inf"))
        keys = scores
        if temperature is not None:  # Gumbel top-k: k items drawn without replacement
            uniform = torch.rand(scores.shape, generator=generator, device=scores.device).clamp(1e-10, 1.0)
            keys = scores / temperature - torch.log(-torch.log(uniform))
        items = keys.topk(min(k, self.num_items), dim=1).indices
        top = scores.gather(1, items)
        items = F.pad(torch.where(torch.isfinite(top), items, -1), (0, k - items.shape[1]), value=-1)
        top = F.pad(top, (0, k - top.shape[1]), value=float("-inf"))
        return Generated(items, self.item_codes[items.clamp(min=0)], top)


MEAN = ModelKind(
    "mean",
    id_schemes=("rqvae", "rqkmeans", "lsh", "random"),
    ids="ordered codes",
    histories=("codes", "pooled"),
    ranking="every item scored by the sum of its codes' log-probabilities",
)

# Small and short: the contract is about what each kind does, not how well it learns.
SMALL = {
    "model": {"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64, "encoder_layers": 1, "decoder_layers": 1},
    "train": {"steps": 30, "eval_every": 0, "checkpoint_every": 30, "log_every": 5, "valid_users": 100},
}


def small(cfg: RunConfig, **sections) -> RunConfig:
    values = cfg.to_dict()
    for section, settings in (*SMALL.items(), *sections.items()):
        values[section].update(settings)
    return RunConfig.from_dict(values)


CONFIGS = {
    "tiger": lambda: small(tiny_config()),
    "tiger ensemble": lambda: small(tiny_config(), train={"members": 2}),
    "rpg": lambda: small(preset_config("tiny", "paper", "rpg")),
    "mean": lambda: small(tiny_config(), model={"kind": "mean"}, train={"lr": 0.05}),
}


@pytest.fixture(scope="module")
def mean_kind():
    registry.register(MeanModel, MEAN)
    yield
    del registry.MODELS["mean"], MODEL_KINDS["mean"]


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request, mean_kind, tmp_path_factory):
    """(name, config, run directory, metrics) of a finished tiny run of each kind."""
    cfg = CONFIGS[request.param]()
    run_dir = tmp_path_factory.mktemp(request.param.replace(" ", "-"))
    return request.param, cfg, run_dir, run("tiny", cfg, run_dir)


@pytest.fixture(scope="module")
def history():
    dataset = make_tiny()
    return [dataset.item_ids[i] for i in dataset.sequences[0][:4]]


def test_the_dummy_kind_is_registered_beside_the_built_in_ones(mean_kind):
    assert {"tiger", "rpg", "mean"} <= set(registry.MODELS) and registry.model_class("mean") is MeanModel
    assert RunConfig.from_dict(CONFIGS["mean"]().to_dict()).validate().model.kind == "mean"


def test_training_lowers_the_loss_and_the_metrics_are_those_of_the_saved_model(trained):
    name, cfg, run_dir, metrics = trained
    losses = [row["loss"] for row in read_csv(run_dir / "train_log.csv")]
    assert losses[-1] < losses[0]
    cfg_back, _, data, test, model = load_trained_run(run_dir)
    assert isinstance(model, TigerEnsemble if name == "tiger ensemble" else registry.model_class(cfg.model.kind))
    again = evaluate_examples(model, data, test, cfg_back, "test")
    assert {m: again[m] for m in ("recall@10", "ndcg@10")} == {m: metrics["test"][m] for m in ("recall@10", "ndcg@10")}


def test_recommendations_are_distinct_unseen_catalogue_items_best_first(trained, history):
    _, cfg, run_dir, _ = trained
    recommender = Recommender.load(run_dir, device="cpu")
    results = recommender.recommend(history, k=5)
    ids = [r["item_id"] for r in results]
    assert len(set(ids)) == 5 and not set(ids) & set(history) and all(i in recommender for i in ids)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    only = ids[1:3] + history
    assert {r["item_id"] for r in recommender.recommend(history, k=5, only=only)} == set(ids[1:3])


def test_the_server_answers_as_the_recommender_does(trained, history):
    _, cfg, run_dir, _ = trained
    recommender = Recommender.load(run_dir, device="cpu")
    with TestClient(create_app(recommender)) as client:
        assert client.get("/health").json()["model"] == cfg.model.kind
        served = client.post("/recommend", json={"history": history, "k": 5}).json()["recommendations"]
    expected = recommender.recommend(history, k=5)
    assert [r["item_id"] for r in served] == [r["item_id"] for r in expected]
    assert [r["score"] for r in served] == pytest.approx([r["score"] for r in expected])


def test_saved_weights_load_back_to_the_same_recommendations(trained, history, tmp_path):
    _, cfg, run_dir, _ = trained
    recommender = Recommender.load(run_dir, device="cpu")
    before = recommender.recommend(history, k=5)
    recommender.model.save(tmp_path / "weights.safetensors")
    with torch.no_grad():
        for parameter in recommender.model.parameters():
            parameter.normal_()
    recommender.model.configure_decoding(cfg.eval)
    scrambled = recommender.recommend(history, k=5)
    recommender.model.load(tmp_path / "weights.safetensors")
    recommender.model.configure_decoding(cfg.eval)
    assert recommender.recommend(history, k=5) == before != scrambled


def test_the_config_reads_back_from_dict_json_and_the_run_directory(trained):
    _, cfg, run_dir, _ = trained
    assert RunConfig.from_dict(cfg.to_dict()) == cfg == RunConfig.from_dict(json.loads(cfg.to_json()))
    assert read_run_config(run_dir) == cfg
