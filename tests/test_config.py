import pytest

from tigerrec.config import RunConfig
from tigerrec.errors import TigerrecError


def test_defaults_are_the_paper_values():
    cfg = RunConfig()
    assert (cfg.ids.levels, cfg.ids.codebook_size, cfg.ids.code_dim, cfg.ids.beta) == (3, 256, 32, 0.25)
    assert cfg.ids.hidden_dims == [512, 256, 128]
    assert (cfg.model.encoder_layers, cfg.model.decoder_layers, cfg.model.num_heads, cfg.model.head_dim) == (
        4,
        4,
        6,
        64,
    )
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.dropout, cfg.model.user_buckets) == (128, 1024, 0.1, 2000)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps) == (256, 0.01, 10_000)
    assert cfg.data.max_history == 20


def test_yaml_and_toml_files(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  steps: 123\nids:\n  scheme: rqkmeans\n")
    (tmp_path / "c.toml").write_text("[model]\nd_model = 64\n[text]\nencoder = 'x'\n")
    assert RunConfig.load(tmp_path / "c.yaml").train.steps == 123
    assert RunConfig.load(tmp_path / "c.yaml").ids.scheme == "rqkmeans"
    cfg = RunConfig.load(tmp_path / "c.toml")
    assert cfg.model.d_model == 64 and cfg.text.encoder == "x"


def test_overrides_parse_values_and_reject_unknown_keys():
    cfg = RunConfig().override(
        ["train.steps=50", "train.lr=0.001", "model.use_user_token=false", "ids.hidden_dims=[64, 32]"]
    )
    assert cfg.train.steps == 50 and cfg.train.lr == 0.001 and cfg.model.use_user_token is False
    assert cfg.ids.hidden_dims == [64, 32]
    with pytest.raises(ValueError, match="unknown config key"):
        RunConfig().override(["train.stepz=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        RunConfig().override(["steps"])
    with pytest.raises(ValueError, match="must be int"):
        RunConfig().override(["train.steps=many"])


def test_bad_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunConfig.load(tmp_path / "missing.yaml")
    (tmp_path / "c.yaml").write_text("trian:\n  steps: 1\n")
    with pytest.raises(ValueError, match="unknown config key"):
        RunConfig.load(tmp_path / "c.yaml")


def test_public_api_is_importable_from_the_package():
    import tigerrec
    from tigerrec import Recommender, RunConfig, load_dataset, run  # noqa: F401

    assert tigerrec.__version__ and set(tigerrec.__all__) >= {"Recommender", "RunConfig", "load_dataset", "run"}
    with pytest.raises(AttributeError):
        _ = tigerrec.not_a_name


def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from tigerrec.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_public_api_imports_from_a_built_wheel(tmp_path):
    """The wheel, not the source tree, holds the package and its public names."""
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("tigerrec-*.whl"))
    assert "tigerrec/__init__.py" in zipfile.ZipFile(wheel).namelist()
    # A pure-Python wheel is importable as a zip: put it first on the path, outside the source tree.
    check = (
        "import tigerrec; from tigerrec import Recommender, RunConfig, load_dataset, run; "
        "print(tigerrec.__file__, tigerrec.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(wheel)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(str(wheel)) and out[1]


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
