import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tigerrec.cli import main
from tigerrec.report import line_chart, metrics_table, nice_ticks, render_report, write_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tiny_run):
    return write_report(tiny_run)


def test_report_has_every_section_and_plot(report, tiny_run):
    assert report == tiny_run / "report.html"
    page = report.read_text()
    for section in (
        "Test metrics",
        "Training loss",
        "Learning rate",
        "Validation",
        "Codebook utilisation per level",
        "Items sharing the same first codes",
        "Semantic-ID prefix explorer",
        "TIGER paper, Table 1",
    ):
        assert section in page, section
    assert page.count("<svg") == 5 and page.count("<polyline") == 4  # loss + lr + NDCG@10 + Recall@10
    assert "Learning rate (adafactor, rsqrt schedule)" in page  # the schedule that was used
    date = json.loads((tiny_run / "metrics.json").read_text())["date"]
    assert "<dt>machine</dt>" in page and f"<dt>date</dt><dd>{date}</dd>" in page  # where and when it ran
    assert "<details class='c1' open>" in page and "<details class='c2'" in page
    titles = [json.loads(line)["title"] for line in (tiny_run / "items.jsonl").read_text().splitlines()]
    assert sum(title in page for title in titles) >= 20
    # self-contained: no scripts, no external resources
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_paper_row_matches_the_dataset():
    test = {"recall@5": 0.05, "ndcg@5": 0.03, "recall@10": 0.07, "ndcg@10": 0.04}
    beauty = metrics_table({"dataset": "Beauty", "test": test})
    assert all(v in beauty for v in ("0.0454", "0.0321", "0.0648", "0.0384")) and "test / paper" in beauty
    assert "0.0264" in metrics_table({"dataset": "Sports_and_Outdoors", "test": test})
    assert "0.0712" in metrics_table({"dataset": "toys", "test": test})
    other = metrics_table({"dataset": "movies", "test": test})
    assert "<td>-</td>" in other and "0.04" in other


def test_item_text_is_escaped_and_missing_parts_are_tolerated(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "ids", run_dir / "ids")
    shutil.copy(tiny_run / "config.json", run_dir)
    rows = [json.loads(line) for line in (tiny_run / "items.jsonl").read_text().splitlines()]
    for row in rows:
        row["title"] = "<script>alert('x')</script> & co"
    (run_dir / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = render_report(run_dir)  # no metrics.json, no logs
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "No metrics.json" in page and "no data" in page


def test_plot_helpers():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 3)[0] <= 3 < nice_ticks(3, 3)[-1]
    chart = line_chart([("a<b", [1, 2, 3], [0.5, float("nan"), 0.7])], "T", "x", "y")
    assert chart.startswith("<svg") and "a&lt;b" in chart and "a<b" not in chart
    assert "<rect" not in chart  # one series: no legend
    assert "no data" in line_chart([("a", [], [])], "Empty", "x", "y")


def test_cli_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000 and str(out) in capsys.readouterr().out


def test_report_renders_in_a_headless_browser(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium")
    shot = tmp_path / "report.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists()
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 50_000  # a blank page compresses to a few kB; this one has text and plots
