"""The tables of BENCHMARKS.md and README.md, generated from the result files.

    python benchmarks/tables.py           # rewrite every table in place
    python benchmarks/tables.py --check   # exit 1, naming each table that differs from what the files give

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``. Its figures come from the result
files under ``benchmarks/results/``; the machine, date and command of each row from
``benchmarks/results/MANIFEST.json``; the papers' figures from ``benchmarks/results/papers/paper_rows.json``.
A table shows a command up to its first " (" (where the manifest adds how it was run) and without the options
every run of its kind shares (``SHARED``): the manifest has it whole. ``--check`` also checks that
MANIFEST.json lists every result file and only files that exist, that its ``current`` flags mark exactly the
files BENCHMARKS.md cites (and their logs), and that paper_rows.json agrees with ``tigerrec/presets.py``.
Standard library only (no torch): it runs in a second from any directory.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MANIFEST = RESULTS / "MANIFEST.json"
PAPERS = RESULTS / "papers" / "paper_rows.json"
DOCS = ("BENCHMARKS.md", "README.md")
UNLISTED = ("MANIFEST.json", "README.md", "test_ledger.jsonl")  # not results, or written elsewhere
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
DATASETS = {"beauty": "Beauty", "toys": "Toys", "sports": "Sports"}
PROTOCOL = {"history_ranked": "history ranked", "history_excluded": "history excluded"}
# Options left out of the commands in tables: the data directory, the validation cadence, the result file.
SHARED = (
    r" --data-dir \.\./shared/data/\w+",
    r" --set train\.(eval_every|eval_every_minutes|valid_users|log_every)=[^\s,;]+",
    r" --out benchmarks/results/\S+",
)

# Result files by short name: the folder of their study and the file.
ENSEMBLE = "2026-12-06-ensemble"
CAP = "2026-12-05-pass-cap"
RPG = "2026-11-30-rpg"
POOLED = "2026-12-05-pooled-history"


def load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def manifest() -> dict[str, dict]:
    return {e["path"]: e for e in json.loads(MANIFEST.read_text())["files"]}


def papers() -> dict:
    return json.loads(PAPERS.read_text())


def num(value: float | None) -> str:
    if value is None:
        return ""
    return "0" if value == 0 else f"{value:.4f}".lstrip("0")


def machine_short(machine: str) -> str:
    if machine in ("unknown", "none", ""):
        return "not recorded"
    name, _, rest = machine.partition(" (x86_64)")
    if not rest:  # older files: no CPU model
        return "x86_64, CPU model not recorded"
    name = name.replace("Intel(R) Xeon(R) Processor", "Intel Xeon")
    return f"{name}, {'bf16' if 'bf16 yes' in rest else 'fp32'}"


def entry(rel: str) -> dict:
    return MANIFEST_ENTRIES[f"benchmarks/results/{rel}"]


def short_command(command: str) -> str:
    command = command.split(" (")[0]
    for pattern in SHARED:
        command = re.sub(pattern, "", command)
    return command


def provenance(rel: str) -> list[str]:
    """machine and date, command, result link of one result file."""
    e = entry(rel)
    machine, date = machine_short(e["machine"]), e["date"]
    if date == "unknown":
        when = "not recorded" if machine == "not recorded" else f"{machine}, date not recorded"
    else:
        when = f"{machine}, {date}"
    return [when, f"`{short_command(e['command'])}`", link(rel)]


def link(rel: str) -> str:
    return f"[{Path(rel).stem}](benchmarks/results/{rel})"


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[list]) -> str:
    return "\n".join([row(header), row(["---"] * len(header)), *(row(r) for r in rows)])


def values(metrics: dict) -> list[float]:
    return [metrics[m] for m in METRICS]


def share(vals: list[float], paper: list[float]) -> str:
    shares = [v / p for v, p in zip(vals, paper)]
    low, high = round(min(shares) * 100), round(max(shares) * 100)
    return f"{low}%" if low == high else f"{low}-{high}%"


def training(run: dict) -> str:
    """Training minutes and samples of a run's metrics.json (ensembles: per member)."""
    t = run["training"]
    seconds = run.get("timings", {}).get("train_seconds") or t["train_seconds"]
    batch = run["config"]["train"]["batch_size"]
    members = t.get("members") or [t]
    samples = [m.get("samples") or m["steps"] * batch for m in members]
    if len(samples) > 1:
        shown = (
            f"2 x {samples[0] / 1e6:.2f}M" if len(set(samples)) == 1 else " + ".join(f"{s / 1e6:.2f}M" for s in samples)
        )
    else:
        shown = f"{samples[0] / 1e6:.2f}M"
    item_model = f" + SASRec {t['item_model']['train_seconds'] / 60:.0f} min" if "item_model" in t else ""
    return f"{seconds / 60:.0f} min, {shown} samples{item_model}"


def markov_excluded(methods: dict) -> dict:
    """The Markov chain's test metrics with history items excluded, from either layout of
    counting_baselines.py's output (``test_protocols`` in newer files, a method of its own in older ones)."""
    markov = methods["Markov (last item)"]
    if "test_protocols" in markov:
        return markov["test_protocols"]["history_excluded"]
    return methods["Markov (history excluded)"]["test"]


def protocol(rel: str) -> str:
    return PROTOCOL[entry(rel)["protocol"]]


def paper_protocol_metrics(run: dict, rel: str) -> dict | None:
    """A run's test metrics with history ranked (the TIGER paper's protocol), to show beside its row when that
    row reports the other protocol; None otherwise."""
    if protocol(rel) == PROTOCOL["history_ranked"]:
        return None
    return run.get("test_protocols", {}).get("history_ranked")


# ---------------------------------------------------------------------------------------------- tables


TABLE1_RUNS = {
    "beauty": [
        ("**TIGER + SASRec, `make run`** (default)", "2026-12-07-fused-default/run_beauty_fused.json"),
        ("TIGER, 2 models (the default before)", f"{ENSEMBLE}/run_beauty_ensemble.json"),
        ("RPG", f"{RPG}/rpg_beauty.json"),
        ("TIGER, `--recipe paper`", "2026-11-29-paper-recipe/run_beauty_130min.json"),
    ],
    "toys": [
        ("**TIGER + SASRec, `make run DATASET=toys`** (default)", "2026-12-07-fused-default/run_toys_fused.json"),
        ("TIGER, 2 models (the default before)", f"{ENSEMBLE}/run_toys_ensemble.json"),
        ("RPG", f"{RPG}/rpg_toys.json"),
    ],
    "sports": [
        ("**TIGER + SASRec, `make run DATASET=sports`** (default)", "2026-12-07-fused-default/run_sports_fused.json"),
        ("TIGER, 2 models (the default before)", f"{ENSEMBLE}/run_sports_ensemble.json"),
        ("RPG", f"{RPG}/rpg_sports.json"),
    ],
}


def table1(dataset: str) -> str:
    paper = papers()["tiger_table1"][dataset]
    rows = []
    for label, rel in TABLE1_RUNS[dataset]:
        run = load(rel)
        vals = values(run["test"])
        rows.append(
            [label, protocol(rel), *map(num, vals), share(vals, paper["TIGER"]), training(run), *provenance(rel)]
        )
        ranked = paper_protocol_metrics(run, rel)
        if ranked:
            vals = values(ranked)
            rows.append(["the same run", PROTOCOL["history_ranked"], *map(num, vals), share(vals, paper["TIGER"]),
                         "", "", "", ""])  # fmt: skip
    steps = papers()["tiger_training_steps"][dataset]
    paper_link = link("papers/paper_rows.json")
    rows.append(
        [
            "TIGER paper",
            "history ranked",
            *map(num, paper["TIGER"]),
            "100%",
            f"{steps // 1000}k steps",
            "",
            "",
            paper_link,
        ]
    )
    header = [
        "test",
        "protocol",
        "R@5",
        "N@5",
        "R@10",
        "N@10",
        "of the paper",
        "training",
        "machine, date",
        "command",
        "result",
    ]
    return table(header, rows)


BASELINE_FILES = {
    d: (f"2026-12-03-baselines/baselines_{d}_history_ranked.json", f"2026-12-03-baselines/baselines_{d}.json")
    for d in DATASETS
}
COUNTING = "2026-12-03-counting-baselines/counting_baselines.json"


SASREC = "2026-12-07-sasrec"
# SASRec trained to convergence (this release), where it has run; elsewhere the 0.1.0 rows stand.
CONVERGED_SASREC = {d: f"{SASREC}/baselines_converged_{d}.json" for d in DATASETS}


def converged_sasrec(dataset: str) -> str | None:
    rel = CONVERGED_SASREC[dataset]
    return rel if (RESULTS / rel).exists() else None


def baselines() -> str:
    counting = load(COUNTING)["datasets"]
    rows = []
    for dataset, name in DATASETS.items():
        methods = counting[dataset]["methods"]
        markov = markov_excluded(methods)
        rows.append([name, "Markov chain", "history excluded", *map(num, values(markov)), "", *provenance(COUNTING)])
        converged = converged_sasrec(dataset)
        if converged:
            result = load(converged)
            sasrec = result["methods"]["SASRec"]
            minutes = f"{result['sasrec_training']['train_seconds'] / 60:.0f} min"
            for key, label in PROTOCOL.items():
                rows.append(
                    [name, "**SASRec**", label, *map(num, values(sasrec["test_protocols"][key])), minutes]
                    + provenance(converged)
                )
        else:
            for rel in BASELINE_FILES[dataset]:
                sasrec = load(rel)["methods"]["SASRec"]
                rows.append(
                    [name, "SASRec (0.1.0, capped)", protocol(rel), *map(num, values(sasrec["test"])), ""]
                    + provenance(rel)
                )
        published = papers()["esasrec_sasrec_ss_at10"][dataset]
        rows.append(
            [name, "SASRec+SS, eSASRec benchmark", "history excluded", "", "", *map(num, published), "", "", ""]
            + [link("papers/paper_rows.json")]
        )
    header = [
        "test",
        "method",
        "protocol",
        "R@5",
        "N@5",
        "R@10",
        "N@10",
        "training",
        "machine, date",
        "command",
        "result",
    ]
    return table(header, rows)


FUSED = "2026-12-07-fused-default"
# The default against the tuned SASRec on the same users, one file per dataset run with the fused default.
FRONTIER = {d: f"{FUSED}/frontier_{d}.json" for d in DATASETS}


def frontier() -> str:
    """Per dataset with a fused-default run: the default under both protocols, its generative model alone and
    our SASRec (history excluded, with the paired intervals), and the published SASRec+SS."""
    rows = []
    for dataset, name in DATASETS.items():
        rel = FRONTIER[dataset]
        if not (RESULTS / rel).exists():
            continue
        r = load(rel)
        default, sasrec = r["default"], r["sasrec"]
        minutes = f"{default['make_run_wall_seconds'] / 60:.0f} min" if default.get("make_run_wall_seconds") else ""
        rows += [
            [f"**{name}, `make run`**", "history excluded", *map(num, values(default["history_excluded"])),
             interval(r["paired_ci95_default_minus_sasrec"]), minutes, *provenance(rel)],
            [f"{name}, `make run`", "history ranked", *map(num, values(default["history_ranked"])), "", "", "", "", ""],
            [f"{name}, its TIGER alone", "history excluded",
             *map(num, values(default["generative_alone"]["history_excluded"])),
             interval(r["paired_ci95_default_minus_generative_alone"]) + " (default - it)", "", "", "", ""],
            [f"{name}, our SASRec", "history excluded", *map(num, values(sasrec["history_excluded"])), "",
             f"{sasrec['train_seconds'] / 60:.0f} min", "", "", ""],
            [f"{name}, SASRec+SS (published)", "history excluded", "", "", *map(num, r["published_sasrec_ss"].values()),
             "", "", "", "", link("papers/paper_rows.json")],
        ]  # fmt: skip
    header = ["test", "protocol", "R@5", "N@5", "R@10", "N@10", "default - SASRec, R@10 / N@10", "time"]
    return table([*header, "machine, date", "command", "result"], rows)


def interval(by_metric: dict) -> str:
    return " / ".join(f"[{lo:+.4f}, {hi:+.4f}]".replace("0.", ".") for lo, hi in by_metric.values())


TIME_RUNS = [
    ("one model, 30 passes (bf16)", f"{CAP}/run_beauty_cap30.json"),
    ("two models of 30 passes: `make run` before (bf16)", f"{ENSEMBLE}/run_beauty_ensemble.json"),
    ("one model re-ranked by SASRec: `make run` (bf16)", "2026-12-07-fused-default/run_beauty_fused.json"),
]


def time_to_quality() -> str:
    rows = []
    for label, rel in TIME_RUNS:
        run = load(rel)
        end_to_end = sum(run["timings"].values())
        rows.append(
            [label, training(run), f"{end_to_end / 60:.0f} min", *map(num, values(run["test"])[2:]), *provenance(rel)]
        )
    header = ["Beauty, `tuned`", "training", "end to end", "R@10", "N@10", "machine, date", "command", "result"]
    return table(header, rows)


# The default against its nearest alternatives; every row that was tried is in the pass-cap and ensemble studies.
BACKTESTS = [
    ("**30 passes** (the default per model)", f"{CAP}/run_beauty_backtest_30passes.json"),
    ("88 passes (110 minutes, no cap)", f"{CAP}/run_beauty_backtest_long.json"),
    ("two models of 30 passes (the default before)", f"{ENSEMBLE}/run_beauty_backtest_ensemble2.json"),
    ("two models of 15 passes", f"{ENSEMBLE}/run_beauty_backtest_2x15.json"),
]


def backtests() -> str:
    rows = []
    for label, rel in BACKTESTS:
        run = load(rel)
        vals = [run["valid"]["ndcg@10"], run["test"]["recall@10"], run["test"]["ndcg@10"]]
        rows.append([label, *map(num, vals), *provenance(rel)])
    header = ["Beauty backtest", "valid (t-2) N@10", "t-1 R@10", "t-1 N@10", "machine, date", "command", "result"]
    return table(header, rows)


SPEED_FILES = [
    ("4 tokens per history item", "2026-11-29-speed/speed.json"),
    ("4 tokens per history item", f"{POOLED}/speed_avx2_codes.json"),
    ("pooled: 1 token per history item (`tuned`)", f"{POOLED}/speed_avx2_pooled.json"),
]


def speed() -> str:
    rows = []
    for label, rel in SPEED_FILES:
        s = load(rel)
        rows.append(
            [
                label,
                f"{s['train_samples_per_s']:,.0f}",
                f"{s['train_samples_per_s_naive_fp32']:,.0f}",
                f"{s['train_gflops_per_sample']:.2f}",
                f"{s['eval_users_per_s_beam20']:,.0f}",
                *provenance(rel),
            ]
        )
    header = ["TIGER input", "training samples/s", "fp32, padded", "GFLOP/sample", "users/s, beam 20", "machine, date"]
    return table([*header, "command", "result"], rows)


# The default, fused, loaded by aiohttp clients (which cost the shared cores far less than httpx's), served by
# tigerrec serve's default model workers.
SERVE_LOAD = "2026-12-07-decode-rate/serve_load_beauty_fewer_copies.json"


def serving() -> str:
    r = load(SERVE_LOAD)
    offline = r["offline_users_per_s"]
    points = [("50 clients", r["clients_50"]), ("4 clients", r["clients_4"])]
    points.append(("50 clients, reload every 5 s, add-items", {**r["with_reloads"], "throughput_rps": None}))
    rows = []
    for label, point in points:
        rps = point["throughput_rps"]
        lat = point["latency_ms"]
        cpu = point.get("cpu_ms_per_request")
        rows.append(
            [
                label,
                f"{rps:.1f}" if rps is not None else "",
                f"{rps / offline:.0%}" if rps is not None else "",
                *(f"{lat[p]:,.0f} ms" for p in ("p50", "p99")),
                point["errors"],
                f"{cpu['server']:.2f} / {cpu['clients']:.2f}" if cpu else "",
                *(provenance(SERVE_LOAD) if not rows else ["", "", ""]),
            ]
        )
    header = ["Beauty test histories, k = 10", "requests/s", "of offline", "p50", "p99", "errors"]
    header += ["CPU ms per request: server / clients", "machine, date"]
    return table([*header, "command", "result"], rows)


COLD = [("Beauty", "TIGER", "coldstart_beauty"), ("Beauty", "RPG", "coldstart_beauty_rpg")]
COLD += [("Toys", "TIGER", "coldstart_toys"), ("Toys", "RPG", "coldstart_toys_rpg")]


def cold_start() -> str:
    rows = []
    for dataset, model, name in COLD:
        rel = f"2026-11-30-cold-start/{name}.json"
        c = load(rel)
        r = c["recall"]

        def at(key: str, r: dict = r) -> str:
            return num(r[key]["10"]) if key in r else "n/a"

        rows.append(
            [
                f"{dataset}, {model}",
                f"{c['cold_test_users']:,} / {c['unseen_items']}",
                at("Semantic_KNN"),
                at(f"{model} prefix eps=0.1"),
                at(f"{model} scored eps=1"),
                at(f"{model} reserved eps=0.1"),
                at(f"{model} guided reserved eps=0.1"),
                at("Semantic_KNN reserved eps=0.1"),
                *provenance(rel),
            ]
        )
    header = ["R@10 of new items", "users / items", "Semantic_KNN", "prefix", "scored", "reserved", "guided"]
    return table([*header, "Semantic_KNN reserved", "machine, date", "command", "result"], rows)


DIVERSITY = "2026-11-29-paper-experiments/diversity_beauty.json"


def diversity() -> str:
    paper = papers()["tiger_entropy10_beauty"]
    runs = load(DIVERSITY)["rows"]

    def cells(key: str, fmt) -> str:
        return " / ".join(fmt(r[key]) for r in runs)

    paper_cells = " / ".join(f"{paper[format(r['temperature'], '.1f')]:.2f}" if r["temperature"] else "-" for r in runs)
    rows = [
        [
            cells("entropy@10 (level 2)", lambda v: f"{v:.2f}"),
            paper_cells,
            cells("entropy@10 (leaf)", lambda v: f"{v:.2f}"),
            cells("recall@10", num),
            *provenance(DIVERSITY),
        ]
    ]
    header = [
        "Entropy@10, 6 categories",
        "paper",
        "Entropy@10, 220 leaves",
        "R@10",
        "machine, date",
        "command",
        "result",
    ]
    return table(header, rows)


IDS = [
    ("RQ-VAE", "2026-11-28-semantic-ids/ids_beauty.json"),
    ("RQ-KMeans", "2026-11-28-semantic-ids/ids_beauty_rqkmeans.json"),
]
ABLATION = "2026-11-29-paper-experiments/ablation_beauty.json"


def ids_quality() -> str:
    rows = []
    for label, rel in IDS:
        s = load(rel)
        use = " / ".join(f"{u:.0%}" for u in s["utilization"])
        rows.append(
            [
                label,
                use,
                f"{s['unique_prefix_share']:.1%}",
                s["max_collision_group"],
                f"{s['reconstruction']:.3f}",
                f"{s['rqvae_seconds']:.0f} s",
                *provenance(rel),
            ]
        )
    header = ["Beauty, 12,101 items", "codebook use", "unique 3-code prefixes", "largest collision group"]
    return table([*header, "reconstruction", "fit (1 thread)", "machine, date", "command", "result"], rows)


def ids_ablation() -> str:
    paper = papers()["tiger_ablation_beauty"]
    variants = load(ABLATION)["variants"]
    order = ["random", "lsh", "rqkmeans", "rqvae", "rqvae-no-user-token"]
    rows = []
    for metric, label in (("recall@5", "R@5 (paper)"), ("ndcg@10", "N@10 (paper)")):
        cells = []
        for key in order:
            theirs = paper[metric].get(key)
            cells.append(num(variants[key][metric]) + (f" ({num(theirs)})" if theirs else ""))
        rows.append([label, *cells, *provenance(ABLATION)])
    header = ["10 minutes per model", "random IDs", "LSH", "RQ-KMeans", "RQ-VAE", "RQ-VAE, no user token"]
    return table([*header, "machine, date", "command", "result"], rows)


def readme_results() -> str:
    rows = []
    for dataset, name in DATASETS.items():
        paper = papers()["tiger_table1"][dataset]["TIGER"]
        default = TABLE1_RUNS[dataset][0][1]
        rpg = next(rel for label, rel in TABLE1_RUNS[dataset] if label == "RPG")
        fused = "fused" in default  # the datasets not yet run with the fused default show its predecessor
        rows.append(
            [
                f"**{name}, TIGER + SASRec (`make run`)**" if fused else f"**{name}, TIGER, 2 models (before)**",
                protocol(default),
                *map(num, values(load(default)["test"])),
                link(default),
            ]
        )
        ranked = paper_protocol_metrics(load(default), default)
        if ranked:
            rows.append([f"{name}, the same run", PROTOCOL["history_ranked"], *map(num, values(ranked)), link(default)])
        rows.append([f"{name}, RPG", protocol(rpg), *map(num, values(load(rpg)["test"])), link(rpg)])
        markov = markov_excluded(load(COUNTING)["datasets"][dataset]["methods"])
        rows.append([f"{name}, Markov chain", "history excluded", *map(num, values(markov)), link(COUNTING)])
        converged = converged_sasrec(dataset)
        if converged:
            sasrec = load(converged)["methods"]["SASRec"]["test_protocols"]["history_excluded"]
            rows.append([f"{name}, SASRec", "history excluded", *map(num, values(sasrec)), link(converged)])
        else:
            sasrec_rel = BASELINE_FILES[dataset][1]
            sasrec = load(sasrec_rel)["methods"]["SASRec"]["test"]
            rows.append(
                [f"{name}, SASRec (0.1.0, capped)", protocol(sasrec_rel), *map(num, values(sasrec)), link(sasrec_rel)]
            )
        rows.append([f"{name}, TIGER paper", "history ranked", *map(num, paper), link("papers/paper_rows.json")])
    return table(["test, all users", "protocol", "R@5", "N@5", "R@10", "N@10", "result"], rows)


SCALE = "2026-12-07-scale/scale.json"


def scale_cost() -> str:
    """What a catalogue of each size costs TIGER and SASRec on one machine (``benchmarks/scale.py``)."""
    rows = []
    for r in load(SCALE)["rows"]:
        tiger, sasrec = r["tiger"], r["sasrec"]
        rows.append(
            [
                f"{r['items']:,}",
                f"{r['ids_seconds'] / 60:.1f} min",
                f"{r['unique_prefix_share']:.1%} / {r['max_collision_group']:,} / {r['id_length']}",
                f"{r['trie_mb']:.1f} + {r['ids_table_mb']:.1f} MB",
                f"{tiger['parameters'] / 1e6:.1f}M / {sasrec['parameters'] / 1e6:.1f}M",
                f"{tiger['train_samples_per_s']:,.0f} / {sasrec['train_samples_per_s']:,.0f}",
                f"{tiger['decode_ms_per_user_batched']:.2f} / {sasrec['decode_ms_per_user_batched']:.2f}",
                f"{tiger['decode_ms_per_user_single']:.1f} / {sasrec['decode_ms_per_user_single']:.1f}",
                f"{tiger['serve_p50_ms']:.0f} ms",
                f"{r['peak_rss_mb'] / 1024:.1f} GB",
            ]
        )
    header = [
        "items",
        "IDs",
        "unique prefixes / largest group / ID length",
        "trie + ID table",
        "parameters TIGER / SASRec",
        "train samples/s",
        "decode ms/user, batched",
        "decode ms, one user",
        "TIGER serve p50",
        "peak RSS",
    ]
    return table(header, rows)


def scale_quality() -> str:
    """Test Recall@10 (history excluded, the same sampled users) after the same training minutes."""
    rows = []
    for r in load(SCALE)["rows"]:
        cells = [f"{r[m]['recall@10']:.3f} ± {r[m]['se']:.3f}" for m in ("tiger", "sasrec", "markov", "mostpop")]
        rows.append([f"{r['items']:,}", f"{r['eval_users']:,}", f"{r['minutes_per_model']:g}", *cells])
        rows[-1].append(f"{r['oracle']['recall@10']:.3f}")
    header = ["items", "test users", "minutes each", "TIGER", "SASRec", "Markov", "MostPop", "the process itself"]
    return table(header, rows) + "\n\n" + "Machine, date, command: " + ", ".join(provenance(SCALE))


TABLES = {
    "table1-beauty": lambda: table1("beauty"),
    "table1-toys": lambda: table1("toys"),
    "table1-sports": lambda: table1("sports"),
    "baselines": baselines,
    "time-to-quality": time_to_quality,
    "backtests": backtests,
    "speed": speed,
    "serving": serving,
    "cold-start": cold_start,
    "diversity": diversity,
    "ids-quality": ids_quality,
    "ids-ablation": ids_ablation,
    "readme-results": readme_results,
    "frontier": frontier,
    "scale-cost": scale_cost,
    "scale-quality": scale_quality,
}

# ---------------------------------------------------------------------------------------------- checks

BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def render(text: str, problems: list[str], source: str) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            problems.append(f"{source}: unknown table {name!r}")
            return match.group(0)
        generated = TABLES[name]() + "\n"
        if match.group(3) != generated:
            problems.append(f"{source}: table {name} differs from what the result files give")
        return match.group(1) + generated + match.group(4)

    return BLOCK.sub(fill, text)


def check_manifest() -> list[str]:
    listed = set(MANIFEST_ENTRIES)
    present = {
        f"benchmarks/results/{p.relative_to(RESULTS).as_posix()}"
        for p in RESULTS.rglob("*")
        if p.is_file() and not any(p.relative_to(RESULTS).as_posix().startswith(u) for u in UNLISTED)
    }
    problems = [f"MANIFEST.json lists {p}, which does not exist" for p in sorted(listed - present)]
    problems += [f"MANIFEST.json does not list {p}" for p in sorted(present - listed)]
    names = [Path(p).name for p in listed]
    problems += [
        f"MANIFEST.json: the file name {n} is used twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    # "current": cited by BENCHMARKS.md, or the log of a run it cites
    cited = set(re.findall(r"benchmarks/results/[\w./-]+\.json", (ROOT / "BENCHMARKS.md").read_text()))
    for path, e in sorted(MANIFEST_ENTRIES.items()):
        current = path in cited or e.get("described_by") in cited
        if e["current"] != current:
            problems.append(
                f"MANIFEST.json: {path} has current={e['current']}, "
                f"but BENCHMARKS.md {'cites' if current else 'does not cite'} it"
            )
    return problems


def check_papers() -> list[str]:
    """paper_rows.json against the rows tigerrec/presets.py holds (read without importing tigerrec)."""
    presets = ROOT / "tigerrec" / "presets.py"
    if not presets.exists():
        return []
    found = {}
    for node in ast.parse(presets.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("PAPER_TABLE1", "RPG_PAPER_NDCG10"):
                found[target.id] = ast.literal_eval(node.value)
    rows, problems = papers(), []
    for dataset, methods in found.get("PAPER_TABLE1", {}).items():
        for method, vals in methods.items():
            if list(vals) != rows["tiger_table1"][dataset][method]:
                problems.append(f"paper_rows.json: TIGER Table 1 {dataset} {method} differs from tigerrec/presets.py")
    for dataset, value in found.get("RPG_PAPER_NDCG10", {}).items():
        if value != rows["rpg_ndcg10"][dataset]:
            problems.append(f"paper_rows.json: RPG NDCG@10 {dataset} differs from tigerrec/presets.py")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table is out of date")
    args = parser.parse_args()
    problems = check_manifest() + check_papers()
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text()
        table_problems: list[str] = []
        new = render(text, table_problems, doc)
        problems += table_problems
        if not args.check and new != text:
            path.write_text(new)
            print(f"{doc}: {len(table_problems)} table(s) rewritten")
    if args.check:
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for p in problems:
        if "differs from what" not in p:
            print(p, file=sys.stderr)
    return 0


MANIFEST_ENTRIES = manifest()

if __name__ == "__main__":
    sys.exit(main())
