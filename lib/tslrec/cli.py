"""`tslrec ...`: run the pipeline or one stage, generate data, look at the lake.

Every command takes the same config options: --dataset NAME, --config FILE (repeatable), --conf-dir DIR and
key=value overrides, e.g. `tslrec run --dataset beauty ingest.kcore.user=5 spark.master=spark://host:7077`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq
import yaml

from tslrec.config import available_datasets, load_config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.logs import get_logger, setup_logging
from tslrec.pipeline import STAGES, StageOutcome, run_stages, select_stages, stage_names
from tslrec.report import write_report

log = get_logger(__name__)


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help=f"conf/datasets/<name>.yaml (default synthetic): {', '.join(available_datasets())}")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML layer(s)")
    parser.add_argument("--conf-dir", type=Path, help="folder holding defaults.yaml (default: the checkout's conf/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. ingest.kcore.user=5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tslrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the stages in order for one dataset and config")
    _config_options(run)
    run.add_argument("--from", dest="start", choices=stage_names(), help="start at this stage")
    run.add_argument("--until", choices=stage_names(), help="stop after this stage")
    run.add_argument("--only", choices=stage_names(), help="run this stage alone")
    run.add_argument("--force", action="store_true", help="run every selected stage, even when nothing changed")
    for stage in STAGES:
        _config_options(commands.add_parser(stage.name, help=f"run the {stage.name} stage alone"))
    synth = commands.add_parser("synth", help="write the synthetic event log as files (for benchmarks and trials)")
    _config_options(synth)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    synth.add_argument("--force", action="store_true", help="replace --out when it already holds files")
    tables = commands.add_parser("tables", help="list the lake's tables with version, rows and last writer")
    _config_options(tables)
    show = commands.add_parser("config", help="print the resolved config and its hash")
    _config_options(show)
    commands.add_parser("stages", help="print the stage graph")
    report = commands.add_parser("report", help="write the run's HTML report (metrics, categories, LLM cost, config)")
    report.add_argument("--out", type=Path, help="the HTML file (default: <run.reports>/<run id>.html)")
    _config_options(report)
    sql = commands.add_parser("sql", help="read-only SQL over the lake's tables by name (DuckDB)")
    sql.add_argument("query", help='one SELECT statement, e.g. "SELECT * FROM dataset_stats"')
    _config_options(sql)
    sql.add_argument("--out", type=Path, help="write the result to a .csv or .parquet file instead of printing it")
    sql.add_argument("--max-rows", type=int, default=50, help="rows printed (default 50); --out writes all")
    sql.add_argument("--force", action="store_true", help="replace --out when it exists (never inside the lake)")
    compare = commands.add_parser(
        "compare", help="recommender metrics over seeds (mean, std), and a t-test between two configurations"
    )
    _config_options(compare)
    compare.add_argument("--a", metavar="BACKBONE/VARIANT", help="e.g. sasrec/base")
    compare.add_argument("--b", metavar="BACKBONE/VARIANT", help="e.g. sasrec/tslrec")
    compare.add_argument("--stage", choices=("train", "pretrain"), default="train")
    compare.add_argument("--split", choices=("test", "valid"), default="test")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return _dispatch(args)
    except TslrecError as exc:
        print(f"tslrec: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "stages":
        for stage in STAGES:
            print(f"{stage.name:<12} reads {', '.join(stage.reads) or 'raw input'} -> writes {', '.join(stage.writes)}"
                  f"; settings: {', '.join(stage.settings) or 'none'}")
        return 0
    if args.conf_dir:
        # every part (Spark profiles, DeepSpeed configs, worker processes) reads the same conf folder
        os.environ["TSLREC_CONF_DIR"] = str(args.conf_dir.resolve())
    config = load_config(args.dataset, args.overrides, args.config, args.conf_dir)
    if args.command == "config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        print(f"# run id: {config.run_id}  config hash: {config.hash()}")
        return 0
    ctx = RunContext(config)
    if args.command == "tables":
        _print_tables(ctx)
        return 0
    if args.command == "synth":
        return _synth(ctx, args.out, args.format, args.force)
    if args.command == "report":
        print(f"report: {write_report(ctx, args.out or report_path(ctx))}")
        return 0
    if args.command == "sql":
        return _sql(ctx, args.query, args.out, args.max_rows, args.force)
    if args.command == "compare":
        return _compare(ctx, args.a, args.b, args.stage, args.split)
    stages = select_stages(args.start, args.only, args.until) if args.command == "run" else select_stages(only=args.command)
    started = time.monotonic()
    outcomes = run_stages(ctx, stages, skip_unchanged=args.command == "run" and not args.force)
    _print_summary(ctx, outcomes, time.monotonic() - started)
    if args.command == "run":
        print(f"report: {write_report(ctx, report_path(ctx))}")
    return 0


def report_path(ctx: RunContext) -> Path:
    return Path(ctx.config.run.reports).expanduser().resolve() / f"{ctx.run_id}.html"


def _print_summary(ctx: RunContext, outcomes: list[StageOutcome], seconds: float) -> None:
    print(f"\nrun {ctx.run_id} (config {ctx.config_hash}) finished in {seconds:.0f}s; lake: {ctx.lake.root}")
    print(f"{'stage':<10} {'seconds':>8}  {'table':<22} {'version':>7} {'rows':>12}")
    for outcome in outcomes:
        if outcome.skipped:
            print(f"{outcome.stage:<10} {'skipped':>8}  (settings and inputs unchanged)")
        for i, w in enumerate(outcome.written):
            stage, secs = (outcome.stage, f"{outcome.seconds:.1f}") if i == 0 else ("", "")
            print(f"{stage:<10} {secs:>8}  {w.table:<22} {w.version:>7} {w.rows:>12}")
    if ctx.lake.exists("models"):
        for model in ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}, columns=["model_id", "path"]).to_pylist():
            print(f"model {model['model_id']}: {model['path']}")
    print("list every table: tslrec tables")


def _print_tables(ctx: RunContext) -> None:
    names = ctx.lake.names()
    if not names:
        print(f"no tables in {ctx.lake.root}")
        return
    print(f"lake {ctx.lake.root}")
    print(f"{'table':<22} {'version':>7} {'rows':>12}  last write")
    for name in names:
        table = ctx.lake.table(name)
        last = table.history(1)[0]
        who = f"run {last.get('tslrec.run_id', '?')} stage {last.get('tslrec.stage', '?')}"
        print(f"{name:<22} {table.version():>7} {table.count():>12}  {who}")


def _compare(ctx: RunContext, a: str | None, b: str | None, stage: str, split: str) -> int:
    from tslrec.srs import significance

    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
    values = significance.seed_values(metrics, stage, split)
    print(f"run {ctx.run_id}, {stage} stage, {split} split, all users (mean and sample std over seeds)")
    print(significance.summarize(values).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if a and b:
        pair = [tuple(x.split("/", 1)) for x in (a, b)]
        if any(len(x) != 2 for x in pair):
            raise TslrecError("--a and --b take BACKBONE/VARIANT, e.g. --a sasrec/base --b sasrec/ci")
        print(f"\n{a} vs {b} (Welch two-sample t-test, two-sided)")
        for c in significance.compare(values, pair[0], pair[1]):
            print(f"{c.metric:<8} {c.mean_a:.4f} ± {c.std_a:.4f} (n={c.seeds_a})  vs  "
                  f"{c.mean_b:.4f} ± {c.std_b:.4f} (n={c.seeds_b})  t={c.t:+.2f}  p={c.p:.4f}")
    return 0


def _sql(ctx: RunContext, query: str, out: Path | None, max_rows: int, force: bool) -> int:
    if out is not None:
        _refuse_to_replace(out, force, "--out of tslrec sql")
        root = ctx.config.lake.root
        if "://" not in root and out.resolve().is_relative_to(Path(root).resolve()):
            raise TslrecError(f"--out {out} is inside the lake ({root}); write query results outside it")
    result = ctx.lake.sql(query)
    if out is None:
        frame = result.slice(0, max_rows).to_pandas()
        print(frame.to_string(index=False, max_colwidth=60))
        if result.num_rows > max_rows:
            print(f"... {result.num_rows} rows in all (--max-rows N to see more, --out FILE to write them)")
        return 0
    if out.suffix not in (".csv", ".parquet"):
        raise TslrecError(f"--out {out}: the file name must end in .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        result.to_pandas().to_csv(out, index=False)
    else:
        pq.write_table(result, out)
    print(f"wrote {result.num_rows} rows to {out}")
    return 0


def _synth(ctx: RunContext, out: str, fmt: str, force: bool) -> int:
    from tslrec.data.synthetic import generate_events

    _refuse_to_replace(Path(out), force, "--out of tslrec synth")
    events = generate_events(ctx.spark, ctx.config.synthetic).drop("src_file", "src_row")
    writer = events.write.mode("overwrite")
    with ctx.progress(f"synthetic log to {out}"):
        (writer.parquet(out) if fmt == "parquet" else writer.option("header", True).csv(out))
    print(f"wrote the synthetic log ({ctx.config.synthetic.users} users, {ctx.config.synthetic.items} items) to {out}")
    return 0


def _refuse_to_replace(out: Path, force: bool, what: str) -> None:
    """A file, or a folder with anything in it, is replaced only when the user says so."""
    if force or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    raise TslrecError(f"{what}: {out} already exists and would be replaced; choose another path or add --force")


if __name__ == "__main__":
    sys.exit(main())
