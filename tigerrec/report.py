"""A self-contained HTML report of a run directory: no network, plots are inline SVG.

Sections: summary, test metrics next to the paper's Table 1, training loss, learning rate and
validation curves, codebook utilisation and collision groups of the Semantic IDs,
and a prefix explorer listing the item titles that share the first codes (so a
reader can see that the IDs are semantic).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from .config import MODEL_KINDS
from .evaluate import METRICS
from .io import read_json, write_text
from .presets import paper_table1
from .rundir import IDS_DIR, IDS_METRICS, ITEMS_FILE, REPORT_FILE, TRAIN_LOG, VALID_LOG, member_dirs, read_items
from .semantic_ids import IDS_FILE, SemanticIDs, has_collision_code
from .train import read_csv

log = logging.getLogger(__name__)

COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706")
STOPWORDS = set("and for the with of in to by a an on oz ml fl pack set new no pcs count inch size".split())


def esc(value) -> str:
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------ SVG plots


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^n)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 12) for i in range(int(math.ceil((hi - first) / step)) + 1)]


def fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.4g}"
    return f"{value:.2g}"


class Axes:
    """Maps data to pixels inside a ``width x height`` SVG with margins for labels."""

    left, right, top, bottom = 64, 16, 34, 46

    def __init__(self, width, height, x_ticks, y_ticks, y_top=None):
        self.width, self.height = width, height
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.x0, self.x1 = x_ticks[0], x_ticks[-1]
        self.y0, self.y1 = y_ticks[0], max(y_ticks[-1], y_top or y_ticks[-1])  # y_top: headroom above the ticks

    def x(self, value):
        return self.left + (value - self.x0) / ((self.x1 - self.x0) or 1) * (self.width - self.left - self.right)

    def y(self, value):
        return (
            self.height
            - self.bottom
            - (value - self.y0) / ((self.y1 - self.y0) or 1) * (self.height - self.top - self.bottom)
        )

    def frame(self, title, x_label, y_label, x_tick_labels=None) -> list[str]:
        out = [f'<text x="{self.left}" y="18" class="title">{esc(title)}</text>']
        for value in self.y_ticks:
            y = self.y(value)
            out.append(
                f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            )
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(value)}</text>')
        labels = x_tick_labels or [(value, fmt(value)) for value in self.x_ticks]
        for value, label in labels:
            out.append(
                f'<text x="{self.x(value):.1f}" y="{self.height - self.bottom + 16}" class="tick" '
                f'text-anchor="middle">{esc(label)}</text>'
            )
        bottom = self.height - self.bottom
        out.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{bottom}" y2="{bottom}" class="axis"/>')
        out.append(f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{bottom}" class="axis"/>')
        out.append(
            f'<text x="{(self.left + self.width - self.right) / 2}" y="{self.height - 8}" '
            f'class="label">{esc(x_label)}</text>'
        )
        out.append(
            f'<text transform="translate(14 {(self.top + bottom) / 2}) rotate(-90)" class="label">{esc(y_label)}</text>'
        )
        return out


def svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def line_chart(
    series: list[tuple[str, list[float], list[float]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 320,
    marker: float | None = None,
    y_min: float | None = None,
) -> str:
    """Lines for ``(name, xs, ys)`` series; ``marker`` draws a dashed vertical line at that x."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)]
    if not xs or not ys:
        return f'<p class="missing">{esc(title)}: no data</p>'
    low = min(ys) if y_min is None else min(y_min, min(ys))
    axes = Axes(width, height, nice_ticks(min(xs), max(xs)), nice_ticks(low, max(ys)))
    body = axes.frame(title, x_label, y_label)
    if marker is not None:
        x = axes.x(marker)
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axes.top}" y2="{height - axes.bottom}" class="marker">'
            f"<title>best step {fmt(marker)}</title></line>"
        )
    for n, (name, sx, sy) in enumerate(series):
        color = COLORS[n % len(COLORS)]
        points = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in zip(sx, sy) if math.isfinite(y))
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(sx) <= 40:  # dots (with hover values) while they stay readable
            body += [
                f'<circle cx="{axes.x(x):.1f}" cy="{axes.y(y):.1f}" r="3" fill="{color}"><title>{esc(name)} '
                f"at {fmt(x)}: {y:.4f}</title></circle>"
                for x, y in zip(sx, sy)
                if math.isfinite(y)
            ]
        if len(series) > 1:  # legend in the top margin, right-aligned, clear of the lines
            x = width - axes.right - 90 * (len(series) - n)
            body.append(
                f'<rect x="{x}" y="{axes.top - 9}" width="12" height="3" fill="{color}"/>'
                f'<text x="{x + 16}" y="{axes.top - 4}" class="legend">{esc(name)}</text>'
            )
    return svg(width, height, body, title)


def bar_chart(
    labels: list[str],
    values: list[float],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 320,
    value_format=fmt,
    y_max: float | None = None,
) -> str:
    if not values:
        return f'<p class="missing">{esc(title)}: no data</p>'
    top = max(max(values), y_max or 0)
    labelled = len(values) <= 16
    # Headroom for the value labels above the bars.
    axes = Axes(width, height, [0, len(values)], nice_ticks(0, top), y_top=top * 1.1 if labelled else None)
    # Label every bar while they fit, else about 20 of them.
    every = max(1, math.ceil(len(labels) / 20))
    body = axes.frame(title, x_label, y_label, [(i + 0.5, label) for i, label in enumerate(labels) if i % every == 0])
    slot = axes.x(1) - axes.x(0)
    for i, (label, value) in enumerate(zip(labels, values)):
        x, y = axes.x(i) + slot * 0.15, axes.y(value)
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{axes.y(0) - y:.1f}" fill="{COLORS[0]}">'
            f"<title>{esc(label)}: {esc(value_format(value))}</title></rect>"
        )
        if labelled:
            body.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" class="tick" '
                f'text-anchor="middle">{esc(value_format(value))}</text>'
            )
    return svg(width, height, body, title)


# ------------------------------------------------------------------ sections


def metrics_table(metrics: dict | None) -> str:
    if not metrics or "test" not in metrics:
        return '<p class="missing">No metrics.json: the run has not finished its evaluation.</p>'
    dataset = str(metrics.get("dataset", ""))
    paper = paper_table1(dataset).get("TIGER")
    head = "".join(f"<th>{m.replace('recall', 'Recall').replace('ndcg', 'NDCG')}</th>" for m in METRICS)
    rows = []
    for split in ("test", "valid"):
        if split in metrics:
            cells = "".join(f"<td>{metrics[split].get(m, float('nan')):.4f}</td>" for m in METRICS)
            rows.append(f"<tr><th>this run, {split}</th>{cells}</tr>")
    paper_cells = "".join(f"<td>{value:.4f}</td>" for value in paper) if paper else "<td>-</td>" * len(METRICS)
    rows.append(f"<tr><th>TIGER paper, Table 1</th>{paper_cells}</tr>")
    if paper:
        ratio = "".join(f"<td>{metrics['test'].get(m, 0) / p:.0%}</td>" for m, p in zip(METRICS, paper))
        rows.append(f"<tr class='ratio'><th>test / paper</th>{ratio}</tr>")
    note = "" if paper else f"<p class='note'>The paper reports no numbers for dataset {esc(dataset)!s}.</p>"
    return f"<table class='metrics'><tr><th></th>{head}</tr>{''.join(rows)}</table>{note}"


def training_plots(run_dir: Path, metrics: dict | None) -> str:
    train_log, valid_log = read_csv(run_dir / TRAIN_LOG), read_csv(run_dir / VALID_LOG)
    best = (metrics or {}).get("training", {}).get("best_step")
    loss = line_chart(
        [("loss", [r["step"] for r in train_log], [r["loss"] for r in train_log])],
        "Training loss",
        "step",
        "cross-entropy per code",
    )
    train_cfg = (metrics or {}).get("config", {}).get("train", {})
    schedule = f" ({train_cfg['optimizer']}, {train_cfg['schedule']} schedule)" if "schedule" in train_cfg else ""
    lr = line_chart(
        [("lr", [r["step"] for r in train_log], [r["lr"] for r in train_log])],
        "Learning rate" + schedule,
        "step",
        "learning rate",
        y_min=0,
    )
    steps = [r["step"] for r in valid_log]
    series = [
        (name, steps, [r.get(key, float("nan")) for r in valid_log])
        for name, key in (("NDCG@10", "ndcg@10"), ("Recall@10", "recall@10"))
    ]
    # An ensemble's other members (train.members): their own validation curves; loss and lr are the first one's.
    members = int((metrics or {}).get("config", {}).get("train", {}).get("members", 1))
    for number, directory in enumerate(member_dirs(run_dir, members)[1:], start=2):
        log_rows = read_csv(directory / VALID_LOG)
        series.append(
            (
                f"NDCG@10, member {number}",
                [r["step"] for r in log_rows],
                [r.get("ndcg@10", float("nan")) for r in log_rows],
            )
        )
    valid = line_chart(
        series,
        "Validation" + (f" (each member; the ensemble ranks with all {members})" if members > 1 else ""),
        "step",
        "metric",
        marker=best,
        y_min=0,
    )
    return f'<div class="plots">{loss}{lr}{valid}</div>'


def id_plots(ids_metrics: dict | None) -> str:
    if not ids_metrics:
        return '<p class="missing">No ids/ids_metrics.json.</p>'
    utilisation = ids_metrics.get("utilization", [])
    usage = bar_chart(
        [f"c{i + 1}" for i in range(len(utilisation))],
        utilisation,
        "Codebook utilisation per level",
        "level",
        "share of codes used",
        value_format=lambda v: f"{v:.0%}",
        y_max=1.0,
    )
    sizes = sorted((int(size), count) for size, count in ids_metrics.get("collision_group_sizes", {}).items())
    # Without a collision code (RPG's OPQ IDs) the group is of items sharing their whole ID, which tie in score.
    shared = "first codes" if has_collision_code(ids_metrics.get("scheme", "")) else "whole ID"
    groups = bar_chart(
        [str(size) for size, _ in sizes],
        [count for _, count in sizes],
        f"Items sharing the same {shared}",
        "group size (items per code tuple)",
        "code tuples",
    )
    facts = [
        ("items", ids_metrics.get("items")),
        ("scheme", ids_metrics.get("scheme")),
        ("encoder", ids_metrics.get("encoder")),
        (
            f"items with a unique {'prefix' if shared == 'first codes' else 'ID'}",
            f"{ids_metrics.get('unique_prefix_share', 0):.1%}",
        ),
        ("largest collision group", ids_metrics.get("max_collision_group")),
        ("reconstruction error", ids_metrics.get("reconstruction")),
    ]
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v is not None)
    return f'<div class="plots">{usage}{groups}</div><dl class="facts">{facts_html}</dl>'


def distinctive_words(titles: list[str], document_frequency: Counter, total: int, count: int = 5) -> list[str]:
    """Words frequent in these titles but rare in the catalogue (tf-idf), to name a group."""
    counts = Counter(w for t in titles for w in set(words(t)))
    score = {w: c * math.log(total / document_frequency[w]) for w, c in counts.items() if c > 1 or len(titles) == 1}
    return sorted(score, key=lambda w: (-score[w], w))[:count]


def words(title: str) -> list[str]:
    return [w for w in re.findall(r"[^\W\d_]{3,}", title.lower()) if w not in STOPWORDS]


def prefix_explorer(
    ids: SemanticIDs, items: dict[str, dict], top_c1: int = 12, max_c2: int = 24, max_titles: int = 12
) -> str:
    """Collapsible lists of item titles under the most populated c1 values and their (c1, c2) prefixes."""
    titles = [str(items.get(item, {}).get("title") or "(no title)") for item in ids.item_ids]
    document_frequency = Counter(w for t in titles for w in set(words(t)))
    by_c1, by_c2 = defaultdict(list), defaultdict(list)
    for index, code in enumerate(ids.codes.tolist()):
        by_c1[code[0]].append(index)
        by_c2[code[0], code[1]].append(index)

    def entry(index):
        code = ", ".join(map(str, ids.codes[index].tolist()))
        return f"<li><code>({code})</code> {esc(titles[index])} <span class='id'>{esc(ids.item_ids[index])}</span></li>"

    def label(members):
        found = distinctive_words([titles[i] for i in members], document_frequency, len(titles))
        return f"<span class='words'>{esc(', '.join(found))}</span>" if found else ""

    sections = []
    for rank, (c1, members) in enumerate(sorted(by_c1.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top_c1]):
        opened = " open" if rank == 0 else ""  # one example unfolded, the rest one click away
        c2_groups = sorted(((c2, m) for (a, c2), m in by_c2.items() if a == c1), key=lambda kv: (-len(kv[1]), kv[0]))
        # A sample across the c2 groups (round robin), so the c1 list is not just its first subgroup.
        sample = [m[i] for i in range(max_titles) for _, m in c2_groups if i < len(m)][:max_titles]
        inner = []
        for n, (c2, group) in enumerate(c2_groups[:max_c2]):
            rest = f"<li class='more'>... {len(group) - max_titles} more</li>" if len(group) > max_titles else ""
            inner.append(
                f"<details class='c2'{opened if n == 0 else ''}><summary><code>({c1}, {c2}, ...)</code> "
                f"{len(group)} items {label(group)}</summary>"
                f"<ul>{''.join(entry(i) for i in group[:max_titles])}{rest}</ul></details>"
            )
        if len(c2_groups) > max_c2:
            inner.append(f"<p class='more'>... {len(c2_groups) - max_c2} smaller (c1, c2) groups</p>")
        sections.append(
            f"<details class='c1'{opened}><summary><code>({c1}, ...)</code> {len(members)} items, "
            f"{len(c2_groups)} second codes {label(members)}</summary>"
            f"<p class='note'>A sample of the titles under c1 = {c1}:</p><ul>{''.join(entry(i) for i in sample)}</ul>"
            f"<p class='note'>By second code:</p>{''.join(inner)}</details>"
        )
    return "".join(sections)


# The charts' own rules, also for a chart saved on its own (a benchmark figure).
PLOT_STYLE = """
.plot .title { font-size: 14px; font-weight: 600; } .plot .tick { font-size: 11px; fill: #4b5563; }
.plot .label { font-size: 12px; fill: #374151; text-anchor: middle; } .plot .legend { font-size: 12px; fill: #374151; }
.plot .grid { stroke: #f0f0f0; } .plot .axis { stroke: #9ca3af; }
.plot .marker { stroke: #9ca3af; stroke-dasharray: 4 3; }
""".strip()

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1180px; padding: 0 1rem; color: #1f2937; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #e5e7eb; padding-bottom: .3rem; }
.sub, .note, .more, .missing { color: #6b7280; } .missing { font-style: italic; }
table.metrics { border-collapse: collapse; margin: .8rem 0; }
table.metrics th, table.metrics td { border: 1px solid #e5e7eb; padding: .35rem .8rem; text-align: right; }
table.metrics th:first-child { text-align: left; } table.metrics tr:first-child th { background: #f3f4f6; }
tr.ratio td { color: #6b7280; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
.plot { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; }
/* plots */
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dl.facts dt { color: #6b7280; } dl.facts dd { margin: 0; }
details { margin: .3rem 0; } details.c1 { border: 1px solid #e5e7eb; border-radius: 6px; padding: .4rem .8rem; }
details.c2 { margin-left: 1.2rem; } summary { cursor: pointer; } summary code { font-weight: 600; }
.words { color: #2563eb; margin-left: .5rem; } .id { color: #9ca3af; font-size: .85em; }
ul { margin: .3rem 0; padding-left: 1.6rem; } li code { color: #6b7280; }
pre { background: #f9fafb; border: 1px solid #e5e7eb; padding: .8rem; overflow-x: auto; font-size: .85em; }
""".replace("/* plots */", PLOT_STYLE)


def render_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one HTML string."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    metrics = _read_optional(run_dir / "metrics.json") or {}  # {} until the run has finished
    ids_metrics = _read_optional(run_dir / IDS_DIR / IDS_METRICS)
    config = _read_optional(run_dir / "config.json") or metrics.get("config", {})
    dataset = metrics.get("dataset") or config.get("source") or run_dir.name

    explorer = '<p class="missing">No Semantic IDs in this run directory.</p>'
    ids_config = config.get("ids", {})
    if (run_dir / IDS_DIR / IDS_FILE).is_file():
        ids = SemanticIDs.load(
            run_dir / IDS_DIR,
            ids_config.get("codebook_size", 256),
            has_collision_code(ids_config.get("scheme", "rqvae")),
        )
        items = read_items(run_dir / ITEMS_FILE) if (run_dir / ITEMS_FILE).is_file() else {}
        explorer = prefix_explorer(ids, items)

    training = metrics.get("training", {})
    kind = config.get("model", {}).get("kind", "tiger")
    ranking = MODEL_KINDS[kind].ranking if kind in MODEL_KINDS else f"as model.kind={kind} ranks"
    members = config.get("train", {}).get("members", 1)
    model_name = kind.upper() + (f", an ensemble of {members} (train.members)" if members > 1 else "")
    summary = [
        ("dataset", dataset),
        ("model", model_name),
        ("ID scheme", ids_config.get("scheme")),
        ("parameters", f"{training['parameters'] / 1e6:.2f}M" if "parameters" in training else None),
        ("training steps", training.get("steps")),
        ("best validation step", training.get("best_step")),
        (
            "timings (s)",
            ", ".join(f"{k.removesuffix('_seconds')} {v}" for k, v in metrics.get("timings", {}).items()) or None,
        ),
        ("end-to-end budget", _budget_line(metrics.get("budget"))),
        ("machine", metrics.get("machine")),
        ("date", metrics.get("date")),
    ]
    summary_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in summary if v is not None)

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tigerrec report: {esc(dataset)}</title><style>{STYLE}</style></head>
<body>
<h1>tigerrec run report: {esc(dataset)}</h1>
<p class="sub">{esc(run_dir.resolve())} &middot; generated {datetime.now():%Y-%m-%d %H:%M}</p>
<dl class="facts">{summary_html}</dl>

<h2 id="metrics">Test metrics</h2>
<p class="note">Leave-one-out, full catalogue, {ranking}. The paper row is TIGER's Table 1 (Rajput et al. 2023).</p>
{metrics_table(metrics)}

<h2 id="training">Training</h2>
{training_plots(run_dir, metrics)}

<h2 id="semantic-ids">Semantic IDs</h2>
{id_plots(ids_metrics)}

<h2 id="explorer">Semantic-ID prefix explorer</h2>
<p class="note">Items whose IDs start with the same codes, for the most populated first codes. Blue words are the
ones that most distinguish a group's titles from the rest of the catalogue: similar items share prefixes.{
        ""
        if has_collision_code(ids_config.get("scheme", "rqvae"))
        else " These codes are unordered: c1 and c2 are the codes of the first two subspaces, each as telling as "
        "any other."
    }</p>
{explorer}

<h2 id="config">Configuration</h2>
<details><summary>config.json</summary><pre>{esc(json.dumps(config, indent=2))}</pre></details>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report (default ``run_dir/report.html``) and return its path."""
    path = Path(out) if out else Path(run_dir) / REPORT_FILE
    write_text(path, render_report(run_dir))
    log.info("report written to %s", path)
    return path


def _read_optional(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _budget_line(budget: dict | None) -> str | None:
    """How ``train.budget_minutes`` was shared out, or None without a budget."""
    if not budget:
        return None
    return (
        f"{budget['budget_minutes']:g} min: training at most {budget['train_minutes']:.1f} min after "
        f"{budget['spent_seconds'] / 60:.1f} min of loading, Semantic IDs and timing the decoder, "
        "final evaluation forecast "
        f"{budget['final_eval_forecast_seconds'] / 60:.1f} min"
    )
