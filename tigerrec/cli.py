"""The ``tigerrec`` command line.

Every expected failure (bad arguments or input, an invalid setting, a corrupt or
mismatched artefact, an unavailable device) ends the command with one line on
stderr, ``tigerrec: error: ...``, and exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .config import CODEWORD_SCHEMES, RunConfig
from .errors import TigerrecError
from .presets import AMAZON_CATEGORIES, DEFAULT_RECIPE, MODELS, PRESETS, RECIPES, recipe_config

log = logging.getLogger("tigerrec")


def load_config(args, preset: str | None = None) -> RunConfig:
    """Recipe < model kind < preset (if any) < config file < --set overrides < dedicated flags."""
    cfg = recipe_config(
        getattr(args, "recipe", None) or DEFAULT_RECIPE, preset, getattr(args, "model", None) or "tiger"
    )
    if args.config:
        from .config import read_config_file

        merged = cfg.to_dict()
        for section, values in read_config_file(args.config).items():
            if not isinstance(values, dict) or section not in merged:
                raise TigerrecError(f"{args.config}: unknown section {section!r}; sections are {sorted(merged)}")
            merged[section].update(values)
        try:
            cfg = RunConfig.from_dict(merged)
        except TigerrecError as e:
            raise TigerrecError(f"{args.config}: {e}") from None
    overrides = list(args.set or [])
    for flag, key in (
        ("encoder", "text.encoder"),
        ("scheme", "ids.scheme"),
        ("epochs", "ids.epochs"),
        ("steps", "train.steps"),
        ("max_minutes", "train.max_minutes"),
        ("budget_minutes", "train.budget_minutes"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "scheme", None) not in (None, *CODEWORD_SCHEMES):
        overrides.append("model.embed_init=normal")  # no codewords for the code embeddings to start from
    return cfg.override(overrides).validate()  # before any data is read


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        help="model kind: tiger (default) or rpg (RPG, Hou et al. 2025: 16 unordered OPQ codes per item "
        "predicted in parallel, every item scored exactly; sets its IDs, model and training defaults)",
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="TIGER's training recipe under the preset and config file: tuned (default; the paper's model "
        "with one pooled token per history item, a final lr cooldown and code embeddings that start "
        "from the codewords) or paper (exact); --model rpg brings its own training settings",
    )
    parser.add_argument(
        "--config", help="YAML or TOML config file (sections: data, text, ids, model, train, eval, sasrec, experiment)"
    )
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    parser.add_argument("--encoder", help="sentence encoder: name, local folder, or 'auto' (offline all-mpnet-base-v2)")
    parser.add_argument(
        "--scheme",
        choices=["rqvae", "rqkmeans", "lsh", "random", "opq"],
        help="Semantic ID scheme (opq: RPG's, with --model rpg)",
    )
    parser.add_argument("--epochs", type=int, help="quantiser training epochs")


def cmd_ids(args) -> None:
    from .data import load_dataset
    from .pipeline import build_semantic_ids

    cfg = load_config(args)
    dataset = load_dataset(args.data_dir, cfg.data.min_interactions)
    ids = build_semantic_ids(dataset, cfg, args.out, args.overwrite)
    metrics = ids.metrics()
    levels = ids.quantized.shape[1]
    unique = (
        f"unique {levels}-code prefixes" if ids.collision_code else f"items with an ID ({levels} codes) of their own"
    )
    print(f"{len(ids.item_ids)} items -> {Path(args.out) / 'semantic_ids.csv'}")
    print(
        f"utilisation per level: {metrics['utilization']}, {unique}: "
        f"{metrics['unique_prefix_share']:.1%}, largest collision group: {metrics['max_collision_group']}"
    )


def resolve_source(target: str, data_dir: str | None) -> tuple[str | None, str]:
    """(preset or None, dataset source) for ``tigerrec run TARGET``."""
    if target in PRESETS:
        if data_dir:
            return target, data_dir
        if target == "tiny":
            return target, "tiny"
        from .data.amazon import download_amazon
        from .text import cache_dir

        return target, str(download_amazon(AMAZON_CATEGORIES[target], cache_dir() / "datasets"))
    if Path(target).is_dir():
        return None, target
    raise TigerrecError(f"{target!r} is neither a preset ({', '.join(PRESETS)}) nor a dataset directory")


def cmd_run(args) -> None:
    from .pipeline import run

    preset, source = resolve_source(args.target, args.data_dir)
    cfg = load_config(args, preset)
    metrics = run(source, cfg, args.out, args.overwrite)
    if metrics:
        test = metrics["test"]
        print(
            f"test  R@5 {test['recall@5']:.4f}  N@5 {test['ndcg@5']:.4f}  "
            f"R@10 {test['recall@10']:.4f}  N@10 {test['ndcg@10']:.4f}"
        )
        print(f"metrics written to {Path(args.out) / 'metrics.json'}")


def cmd_experiment(args) -> None:
    from .experiments import run_experiment

    preset, source = resolve_source(args.target, args.data_dir)
    cfg = load_config(args, preset)
    result = run_experiment(args.name, source, cfg, args.out, args.run_dir, args.overwrite)
    print(result["table"])
    print(f"written to {Path(args.out) / (args.name + '.json')} and {Path(args.out) / (args.name + '.md')}")


def cmd_recommend(args) -> None:
    import json

    from .recommend import Recommender

    def item_list(text: str | None) -> list[str] | None:
        return None if text is None else [item.strip() for item in text.split(",") if item.strip()]

    recommender = Recommender.load(args.run_dir, args.device)
    results = recommender.recommend(
        item_list(args.history),
        args.user,
        args.k,
        args.temperature,
        not args.include_seen,
        args.seed,
        item_list(args.exclude),
        item_list(args.only),
        args.category,
        args.max_new_share,
        args.reserve_new,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    # RPG's IDs have 16 or more codes: the table shows their start (--json has them all).
    rows = [
        (
            str(rank),
            r["item_id"],
            f"{r['score']:.4f}",
            _shorten("(" + ", ".join(map(str, r["semantic_id"])) + ")", 40),
            _shorten(r["title"] or "", 70),
        )
        for rank, r in enumerate(results, 1)
    ]
    header = ("rank", "item id", "score", "semantic id", "title")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i in (0, 2) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_serve(args) -> None:
    api_key = args.api_key or os.environ.get("TIGERREC_API_KEY") or None
    if api_key is None and not _is_loopback(args.host):
        raise TigerrecError(
            f"--host {args.host} is reachable from other machines: give an API key "
            "(--api-key or the TIGERREC_API_KEY environment variable)"
        )
    if args.timeout is not None and args.timeout < 0:
        raise TigerrecError(f"--timeout must be >= 0 seconds (0: no limit), not {args.timeout}")
    workers, threads = serving_workers(args.workers, args.threads)
    try:
        import uvicorn

        from .serve import create_app
    except ImportError as e:
        raise TigerrecError(
            f"tigerrec serve needs FastAPI and uvicorn ({e}); install them with: pip install 'tigerrec[serve]'"
        ) from None
    import torch

    torch.set_num_threads(threads)
    log.info("decoding with %d worker(s) of %d thread(s) each", workers, threads)
    limits = {"max_queue": args.max_queue, "max_body_bytes": args.max_body_bytes, "workers": workers}
    if args.timeout is not None:
        limits["timeout_s"] = args.timeout or None
    app = create_app(
        args.run_dir, admin=args.admin, api_key=api_key, **{k: v for k, v in limits.items() if v is not None}
    )

    def reload_on_hangup(signum, frame) -> None:  # off the signal handler: loading takes seconds
        threading.Thread(target=_reload_logged, args=(app,), name="tigerrec-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, reload_on_hangup)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=not args.no_access_log)


def serving_workers(workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """The server's model workers and torch threads each: ``device.decode_workers`` for this machine (on a
    CPU, one single-threaded worker per core: independent batches keep the cores busier than one batch
    on every thread), or what the user chose (--workers, --threads)."""
    from .device import decode_workers, default_device

    workers, default_threads = decode_workers(default_device(), workers)
    threads = default_threads if threads is None else threads
    if workers < 1 or threads < 1:
        raise TigerrecError(f"--workers and --threads must be at least 1, not {workers} and {threads}")
    return workers, threads


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _reload_logged(app) -> None:
    try:
        app.state.reload()
    except Exception:
        log.exception("reload failed; still serving the previous run")


def cmd_add_items(args) -> None:
    from .catalogue import add_items

    summary = add_items(args.run_dir, args.items, args.vectors)
    print(
        f"added {summary['added']} items to {args.run_dir} ({summary['items']} in all, "
        f"{summary['items'] - summary['trained_items']} since training) in {summary['seconds']:.1f} s"
    )


def cmd_report(args) -> None:
    from .report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report written to {path}")


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


OVERWRITE_HELP = (
    "rebuild the stages of OUT built from other data or settings, and delete everything made from them "
    "(the trained model too); without it such a directory is an error"
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tigerrec", description="Generative retrieval recommenders with Semantic IDs (TIGER, RPG)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    ids = commands.add_parser("ids", help="item metadata -> Semantic IDs (semantic_ids.csv, quantiser, metrics)")
    ids.add_argument("data_dir", help="dataset directory (P5, raw Amazon 2014 or custom tables) or 'tiny'")
    ids.add_argument("--out", required=True, help="output directory")
    ids.add_argument("--overwrite", action="store_true", help="replace IDs in OUT built from other items or settings")
    add_config_options(ids)
    ids.set_defaults(func=cmd_ids)

    run = commands.add_parser("run", help="the whole pipeline: embeddings -> Semantic IDs -> training -> evaluation")
    run.add_argument("target", help="preset (beauty, sports, toys, tiny) or a dataset directory")
    run.add_argument("--data-dir", help="local dataset directory for a preset (otherwise it is downloaded)")
    run.add_argument(
        "--out", required=True, help="run directory (stages built from the same inputs are skipped; training resumes)"
    )
    run.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    run.add_argument("--steps", type=int, help="training steps")
    run.add_argument(
        "--max-minutes", type=float, help="stop training after this many minutes (0: only --budget-minutes limits it)"
    )
    run.add_argument(
        "--budget-minutes",
        type=float,
        help="end the whole run (IDs, training, final evaluation) within this many minutes: "
        "training stops early enough",
    )
    add_config_options(run)
    run.set_defaults(func=cmd_run)

    exp = commands.add_parser(
        "experiment", help="the paper's further experiments: coldstart, diversity, ablation, baselines"
    )
    exp.add_argument("name", choices=["coldstart", "diversity", "ablation", "baselines"], help="which experiment")
    exp.add_argument("target", help="preset (beauty, sports, toys, tiny) or a dataset directory")
    exp.add_argument("--data-dir", help="local dataset directory for a preset (otherwise it is downloaded)")
    exp.add_argument("--out", required=True, help="output directory: NAME.json, NAME.md and the runs it trains")
    exp.add_argument(
        "--run-dir",
        help="diversity: sample this trained run instead of training one; "
        "baselines: add its TIGER metrics to the table",
    )
    exp.add_argument("--steps", type=int, help="training steps of every model it trains")
    exp.add_argument("--max-minutes", type=float, help="training budget of every model it trains")
    exp.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.replace("OUT", "the runs under OUT"))
    add_config_options(exp)
    exp.set_defaults(func=cmd_experiment)

    rec = commands.add_parser("recommend", help="next-item recommendations from a trained run directory")
    rec.add_argument("run_dir", help="run directory written by `tigerrec run`")
    rec.add_argument("--history", required=True, help="comma-separated item ids, oldest first, e.g. 12,55,3")
    rec.add_argument("-k", type=int, default=10, help="number of recommendations (default 10)")
    rec.add_argument("--user", help="user id (selects the user's hashed token, as in training)")
    rec.add_argument("--temperature", type=float, help="sample the beams at this temperature (diverse results)")
    rec.add_argument("--seed", type=int, help="random seed for --temperature")
    rec.add_argument("--include-seen", action="store_true", help="allow items of the history in the results")
    rec.add_argument("--exclude", help="comma-separated item ids to leave out of the results")
    rec.add_argument("--only", help="comma-separated item ids: recommend only among these")
    rec.add_argument("--category", help="recommend only items with this category name, e.g. 'Nail Polish'")
    rec.add_argument(
        "--max-new-share", type=float, help="cap on the share of the results for items added after training"
    )
    rec.add_argument(
        "--reserve-new",
        action="store_true",
        help="give the --max-new-share slots to the best new items even when older items score higher",
    )
    rec.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rec.set_defaults(func=cmd_recommend)

    add = commands.add_parser("add-items", help="give new items Semantic IDs in a trained run, without retraining")
    add.add_argument("run_dir", help="run directory written by `tigerrec run`")
    add.add_argument(
        "items", help="items table (.csv or .parquet): an item_id column and text columns (title, brand, ...)"
    )
    add.add_argument(
        "--vectors",
        help="the new items' vectors (.npz or .parquet keyed by item id), for a run fitted on precomputed vectors",
    )
    add.set_defaults(func=cmd_add_items)

    serve = commands.add_parser("serve", help="HTTP API (FastAPI) for recommendations; docs at /docs")
    serve.add_argument("run_dir", help="run directory written by `tigerrec run`")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument(
        "--admin",
        action="store_true",
        help="serve POST /admin/reload (needs the API key); SIGHUP reloads in any case",
    )
    serve.add_argument(
        "--api-key",
        help="require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every route but /health; "
        "default: the TIGERREC_API_KEY environment variable (which ps does not show); "
        "required unless --host is a loopback address",
    )
    serve.add_argument(
        "--timeout",
        type=float,
        help="seconds a request may wait for its answer before a 504 (default 30; 0: no limit)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        help="queries waiting for the model before new requests get 503 (default 1024)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="batches the model decodes side by side (default: on a CPU one per core, at most 4; on a GPU 1)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="torch threads each worker decodes with (default: the CPUs shared among the workers)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        help="larger request bodies get 413 unread (default 4194304, 4 MiB)",
    )
    serve.set_defaults(func=cmd_serve)

    report = commands.add_parser("report", help="self-contained HTML report of a run (curves, IDs, metrics)")
    report.add_argument("run_dir", help="run directory written by `tigerrec run`")
    report.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors (2, printed by ArgumentParser.error) and --help (0)
        return e.code
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        with logging_redirect_tqdm():
            args.func(args)
    # TigerrecError and the other ValueErrors of bad input (UnknownItemError is a KeyError); OSError for
    # paths that cannot be read or written.
    except (ValueError, KeyError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) quotes its message
        print(f"tigerrec: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
