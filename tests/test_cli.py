"""The command line: every expected failure is one line on stderr and exit code 2."""

import json

import torch
from conftest import CLI_SETTINGS, error_line, snapshot

from tigerrec.cli import main


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
