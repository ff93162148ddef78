"""Data stage (ingest + sequences) on Spark beside a single-node Polars version of the same transformation.

    .venv/bin/python benchmarks/data_stage.py                      # Beauty, ML-1M, synthetic 1M/10M/50M
    .venv/bin/python benchmarks/data_stage.py --sizes 1M --no-shared
    .venv/bin/python benchmarks/data_stage.py --sizes                 # Beauty and ML-1M only
    .venv/bin/python benchmarks/data_stage.py --sizes --repeat 2      # and again in the same process (warm JVM)

Both sides read the same input and do the same work: parse and validate ids and times, set malformed rows
aside, drop exact duplicates, give users and items dense ids in raw-id order, order each user's events in time
and split them leave-one-out, write interactions and sequences as Parquet. Spark also commits Delta versions and
writes its quarantine and reports; Polars writes plain Parquet files. Both are timed in this run, on this machine,
and the Spark jobs (and their Spark stages) each pipeline stage launched are counted, in total and per kind of
work (each progress block of a stage: validate, duplicates, ids, write, statistics...; the rest of the stage as
"outside progress blocks").
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import polars as pl
from pyspark.sql import SparkSession

from tslrec.config import load_config
from tslrec.ledger import machine
from tslrec.context import RunContext
from tslrec.data.synthetic import generate_events
from tslrec.logs import setup_logging
from tslrec.pipeline import run_stages, select_stages
from tslrec.spark import finished_blocks, get_spark

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "50M": 50_000_000}
MEAN_LENGTH = 20
ITEMS = 100_000


def start(parser: argparse.ArgumentParser, defaults: Sequence[str] = (), log_level: str = "WARNING"
          ) -> tuple[argparse.Namespace, list[str], SparkSession]:
    """What every benchmark takes beside its own arguments: a work folder and config overrides; and Spark."""
    parser.add_argument("--work", type=Path, default=Path("/tmp/tslrec-bench"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. spark.master=local[2]")
    args = parser.parse_args()
    setup_logging(log_level)
    overrides = ["spark.profile=local", "spark.progress_interval_s=60", *defaults, *args.overrides]
    args.work.mkdir(parents=True, exist_ok=True)
    return args, overrides, get_spark(load_config(overrides=overrides).spark)


def synthetic_log(work: Path, label: str, interactions: int, overrides: list[str]) -> tuple[Path, float]:
    """Writes (once) a Parquet event log of about `interactions` events from the project's generator."""
    out = work / f"synthetic-{label}"
    config = load_config(overrides=[*overrides, *synthetic_settings(interactions)])
    if not (out / "_SUCCESS").exists():
        started = time.monotonic()
        events = generate_events(get_spark(config.spark), config.synthetic).drop("src_file", "src_row")
        events.write.mode("overwrite").parquet(str(out))
        return out, time.monotonic() - started
    return out, 0.0


def synthetic_settings(interactions: int) -> list[str]:
    users = interactions // MEAN_LENGTH
    return [f"synthetic.users={users}", f"synthetic.items={ITEMS}", f"synthetic.mean_length={MEAN_LENGTH}",
            "synthetic.max_length=200", "synthetic.categories=64", "synthetic.users_per_partition=50000"]


def run_spark(name: str, dataset: str | None, settings: list[str], lake: Path, overrides: list[str]) -> dict:
    shutil.rmtree(lake, ignore_errors=True)
    ctx = RunContext(load_config(dataset, [*overrides, f"lake.root={lake}", *settings]))
    tracker = ctx.spark.sparkContext.statusTracker()
    outcomes, launched, kinds = [], {}, []
    started = time.monotonic()
    for stage in select_stages(until="sequences"):
        before, blocks_before = set(tracker.getJobIdsForGroup()), len(finished_blocks())
        stage_started = time.monotonic()
        outcomes += run_stages(ctx, [stage])
        stage_s = time.monotonic() - stage_started
        outside = set(tracker.getJobIdsForGroup()) - before  # jobs of no progress block
        outside_stages = {s for job in outside if (info := tracker.getJobInfo(job)) for s in info.stageIds}
        blocks = finished_blocks()[blocks_before:]
        kinds += [{"stage": stage.name, "work": b.label.split(": ", 1)[-1], "s": round(b.seconds, 2), "jobs": b.jobs,
                   "spark_stages": b.spark_stages} for b in blocks]
        kinds.append({"stage": stage.name, "work": "outside progress blocks", "jobs": len(outside),
                      "s": round(stage_s - sum(b.seconds for b in blocks), 2), "spark_stages": len(outside_stages)})
        launched[stage.name] = {"jobs": len(outside) + sum(b.jobs for b in blocks),
                                "spark_stages": len(outside_stages) + sum(b.spark_stages for b in blocks)}
    seconds = time.monotonic() - started
    stats = ctx.lake.read_arrow("dataset_stats").to_pylist()[0]
    return {
        "case": name,
        "interactions": stats["interactions"],
        "users": stats["users"],
        "items": stats["items"],
        "spark_s": seconds,
        "spark_stage_s": {o.stage: round(o.seconds, 1) for o in outcomes},
        "spark_jobs": launched,  # per stage: Spark jobs and their Spark stages (skipped ones included)
        "work": kinds,  # per progress block of each stage (read, validate, ids, write, statistics...): s, jobs
    }


def run_polars(fmt: str, path: Path, out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    events, bad = _polars_events(fmt, path)
    bad.write_parquet(out / "quarantine.parquet")
    if fmt == "parquet":  # exact duplicates need a timestamp: the text formats have none
        events = events.unique(["user", "item", "timestamp"], keep="first", maintain_order=True)
    users = events.select("user").unique().sort("user").with_row_index("user_idx")
    items = events.select("item").unique().sort("item").with_row_index("item_idx")
    interactions = events.join(users, on="user").join(items, on="item")
    interactions.select("user_idx", "item_idx", "timestamp", "row", "pos").write_parquet(out / "interactions.parquet")
    sequences = (
        interactions.sort("user_idx", "timestamp", "row", "pos")
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").alias("items"))
        .with_columns(n=pl.col("items").list.len())
        .with_columns(
            train=pl.when(pl.col("n") >= 3).then(pl.col("items").list.head(pl.col("n") - 2)).otherwise("items"),
            valid=pl.when(pl.col("n") >= 3).then(pl.col("items").list.get(-2)),
            test=pl.when(pl.col("n") >= 3).then(pl.col("items").list.get(-1)),
        )
    )
    sequences.write_parquet(out / "sequences.parquet")
    return time.monotonic() - started, interactions.height


def _polars_events(fmt: str, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    if fmt == "parquet":
        raw = pl.read_parquet(path / "*.parquet").with_row_index("row").with_columns(pos=pl.lit(0))
        parsed = raw.with_columns(user=pl.col("user_id"), item=pl.col("item_id"),
                                  timestamp=pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    else:
        lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                            schema_overrides={"line": pl.String}).with_row_index("row")
        tokens = lines.with_columns(tokens=pl.col("line").str.strip_chars().str.split(" "))
        if fmt == "user_items":
            tokens = tokens.with_columns(user=pl.col("tokens").list.first(), item=pl.col("tokens").list.slice(1))
            raw = tokens.explode("item").with_columns(pos=pl.int_range(pl.len()).over("row"))
        else:
            raw = tokens.with_columns(user=pl.col("tokens").list.first(), item=pl.col("tokens").list.get(1, null_on_oob=True),
                                      pos=pl.lit(0))
        parsed = raw.with_columns(user=pl.col("user").cast(pl.Int64, strict=False),
                                  item=pl.col("item").cast(pl.Int64, strict=False),
                                  timestamp=pl.lit(None, pl.Datetime("us", "UTC")))
    ok = pl.col("user").is_not_null() & pl.col("item").is_not_null()
    if fmt == "parquet":
        ok = ok & pl.col("timestamp").is_not_null()
    columns = ["user", "item", "timestamp", "row", "pos"]
    return parsed.filter(ok).select(columns), parsed.filter(~ok).select(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--no-shared", action="store_true", help="skip Beauty and ML-1M")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the cases N times in this process: the first run of a process pays the JVM's warm-up")
    args, overrides, spark = start(parser)

    cases: list[tuple[str, str | None, list[str], str, Path]] = []
    if not args.no_shared:
        for name, dataset, fmt, file in (("Beauty", "beauty", "user_items", "Beauty.txt"),
                                         ("ML-1M", "ml-1m", "user_item", "ml-1m.txt")):
            if (SHARED / file).is_file():
                cases.append((name, dataset, [f"dataset.path={SHARED / file}"], fmt, SHARED / file))
            else:
                print(f"skipping {name}: {SHARED / file} is absent")
    generated = {}
    for label in args.sizes:
        path, seconds = synthetic_log(args.work, label, SIZES[label], overrides)
        generated[label] = seconds
        settings = ["dataset.format=parquet", f"dataset.path={path}", "dataset.name=synth"]
        cases.append((f"synthetic {label}", None, settings, "parquet", path))
    if not cases:
        parser.error(f"nothing to run: the shared datasets are not in {SHARED} and no --sizes were given")

    results = []
    for repeat, (name, dataset, settings, fmt, path) in itertools.product(range(args.repeat), cases):
        name = f"{name}, again ({repeat + 1})" if repeat else name
        result = run_spark(name, dataset, settings, args.work / "lake", overrides)
        polars_s, polars_rows = run_polars(fmt, path, args.work / "polars")
        result.update(polars_s=polars_s, polars_interactions=polars_rows)
        if polars_rows != result["interactions"]:
            print(f"WARNING {name}: Spark kept {result['interactions']} interactions, Polars {polars_rows}")
        results.append(result)
        print(json.dumps(result), flush=True)

    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}; Spark {spark.version} on {spark.sparkContext.master}, Polars {pl.__version__}")
    if any(generated.values()):
        print("synthetic logs generated: " + ", ".join(f"{k} {v:.0f}s" for k, v in generated.items() if v))
    print("\n| case | interactions | users | items | Spark s | Spark inter./s | Polars s | Polars inter./s | Spark/Polars |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['spark_s']:.1f} | "
              f"{r['interactions'] / r['spark_s']:,.0f} | {r['polars_s']:.1f} | "
              f"{r['polars_interactions'] / r['polars_s']:,.0f} | {r['spark_s'] / r['polars_s']:.1f}x |")
    print("\n| case | " + " | ".join(f"{stage}: s, Spark jobs (stages)" for stage in results[0]["spark_jobs"]) + " |")
    print("|---|" + "---|" * len(results[0]["spark_jobs"]))
    for r in results:
        print(f"| {r['case']} | " + " | ".join(f"{r['spark_stage_s'][stage]:.1f}, {n['jobs']} ({n['spark_stages']})"
                                             for stage, n in r["spark_jobs"].items()) + " |")
    print("\n| case | stage | work | s | Spark jobs (stages) |\n|---|---|---|---|---|")
    for r in results:
        for w in r["work"]:
            print(f"| {r['case']} | {w['stage']} | {w['work']} | {w['s']:.1f} | {w['jobs']} ({w['spark_stages']}) |")
    synthetic = [r for r in results[: len(cases)] if r["case"].startswith("synthetic")]  # the first round
    for small, large in zip(synthetic, synthetic[1:]):
        growth = (large["spark_s"] / small["spark_s"]) / (large["interactions"] / small["interactions"])
        print(f"Spark time {small['case']} -> {large['case']}: x{large['spark_s'] / small['spark_s']:.1f} for "
              f"x{large['interactions'] / small['interactions']:.1f} the data (time per interaction x{growth:.2f})")


if __name__ == "__main__":
    main()
