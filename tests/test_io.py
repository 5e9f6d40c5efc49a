"""Durable writes and one writer per run directory."""

import os

import pytest

from tigerrec.errors import TigerrecError
from tigerrec.io import LOCK_FILE, RunLock, write_json


def test_a_second_writer_is_refused_with_one_line_naming_the_first(tmp_path):
    with RunLock(tmp_path, "add-items"):
        with pytest.raises(TigerrecError) as refused:
            with RunLock(tmp_path, "run"):
                pass
    message = str(refused.value)
    assert "\n" not in message and f"tigerrec add-items (pid {os.getpid()})" in message
    with RunLock(tmp_path, "run"):  # released on exit: the next writer gets it
        assert (tmp_path / LOCK_FILE).exists()


def test_taking_the_lock_removes_temp_files_of_killed_writes(tmp_path):
    (tmp_path / "ids").mkdir()
    stale = [tmp_path / ".metrics.json.a1b2.tmp", tmp_path / "ids" / ".codes.npy.x.tmp"]
    for path in stale:
        path.write_text("half")
    write_json(tmp_path / "metrics.json", {"kept": True})
    with RunLock(tmp_path):
        pass
    assert not any(p.exists() for p in stale)
    assert (tmp_path / "metrics.json").read_text().strip().startswith("{")


def test_concurrent_add_items_refuses_the_second(tiny_run, tmp_path):
    from tigerrec.catalogue import add_items

    new = {"new-1": {"title": "a new lipstick", "categories": [["Beauty", "Makeup"]]}}
    with RunLock(tiny_run, "add-items"):  # another add-items holds the directory
        before = (tiny_run / "items.jsonl").read_text()
        with pytest.raises(TigerrecError, match="is in use by tigerrec add-items"):
            add_items(tiny_run, new)
        assert (tiny_run / "items.jsonl").read_text() == before  # nothing written


def test_a_run_is_refused_while_another_writes_its_directory(tmp_path):
    from conftest import tiny_config

    from tigerrec.pipeline import run

    with RunLock(tmp_path / "run", "run"):
        with pytest.raises(TigerrecError, match="is in use by tigerrec run"):
            run("tiny", tiny_config(train={"steps": 2}), tmp_path / "run")
