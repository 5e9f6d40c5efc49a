"""The test ledger."""

import json

from tigerrec.ledger import LEDGER_ENV, config_hash, record_test


def test_every_test_evaluation_appends_a_ledger_line(tmp_path, monkeypatch):
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(LEDGER_ENV, str(ledger))
    record_test("beauty", {"a": 1, "b": {"c": 2}}, "SASRec", {"history_excluded": {"recall@10": 0.1}})
    record_test("toys", {"b": {"c": 2}, "a": 1}, "TIGER", {"history_excluded": {"recall@10": 0.2}})
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [line["dataset"] for line in lines] == ["beauty", "toys"]
    assert lines[0]["config_hash"] == lines[1]["config_hash"] == config_hash({"a": 1, "b": {"c": 2}})
    assert set(lines[0]) == {"date", "dataset", "config_hash", "model", "metrics"}
    assert config_hash({"a": 2}) != config_hash({"a": 1})
