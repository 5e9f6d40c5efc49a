import pytest

from tigerrec.config import RunConfig


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
