"""The one place that builds the SparkSession, and the reporter that shows how far running Spark work is."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml
from pyspark.sql import SparkSession

from tslrec.config import SparkSection, default_conf_dir
from tslrec.errors import ConfigError
from tslrec.logs import get_logger

log = get_logger(__name__)

# Settings the code relies on, whatever the profile: UTC time, Arrow transfer, Delta-compatible timestamps, CSV checks.
_REQUIRED = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.showConsoleProgress": "false",
    # a CSV row's field count is checked on the whole row, whichever columns a query reads
    "spark.sql.csv.parser.columnPruning.enabled": "false",
}
_DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python; a plain `python` run does not."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def profile_settings(profile: str, conf_dir: Path | None = None) -> dict[str, str]:
    path = (conf_dir or default_conf_dir()) / "spark" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown spark.profile '{profile}': no {path}")
    return {str(k): str(v) for k, v in (yaml.safe_load(path.read_text()) or {}).items()}


def get_spark(cfg: SparkSection, app_name: str = "tslrec") -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    master = cfg.master or (None if launched_by_spark_submit() else "local[*]")
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Local Python workers must run this interpreter, so they import the same environment.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {**profile_settings(cfg.profile), **cfg.conf, **_REQUIRED}.items():
        builder = builder.config(key, value)
    started = time.monotonic()
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    # py4j reports every gateway connection at INFO, also from destructors at interpreter exit, when a host's
    # logging (Airflow's, pytest's) may already have closed its streams
    logging.getLogger("py4j").setLevel(max(logging.WARNING, logging.getLogger("py4j").level))
    log.info("Spark %s up on %s in %.1fs", spark.version, spark.sparkContext.master, time.monotonic() - started)
    return spark


def delta_jars_loaded(spark: SparkSession) -> bool:
    """True where Spark's own Delta writer can be used: the Delta session extension is configured."""
    return _DELTA_EXTENSION in spark.conf.get("spark.sql.extensions", "")


def shuffle_partitions(spark: SparkSession) -> int:
    """The partition count of the session's shuffles: a frame spread by hand to this count lines up with them."""
    return int(spark.conf.get("spark.sql.shuffle.partitions"))


def wait_until_no_task_runs(spark: SparkSession, timeout_s: float = 120.0) -> None:
    """A failed job's other tasks may still be running (and writing) after the failure reaches the driver."""
    tracker = spark.sparkContext._jsc.sc().statusTracker()
    deadline = time.monotonic() + timeout_s
    while sum(e.numRunningTasks() for e in tracker.getExecutorInfos()) and time.monotonic() < deadline:
        time.sleep(0.2)


@dataclass(frozen=True)
class SparkBlock:
    """One progress block's cost: how long it took and the Spark jobs (and their Spark stages) it launched."""

    label: str
    seconds: float
    jobs: int
    spark_stages: int


_BLOCKS: list[SparkBlock] = []  # this process's finished blocks, in order: what benchmarks break a stage's time into


def finished_blocks() -> list[SparkBlock]:
    return list(_BLOCKS)


@contextlib.contextmanager
def spark_progress(spark: SparkSession, label: str, interval_s: float) -> Iterator[None]:
    """Logs the tasks done, the total and an ETA of each running Spark stage every `interval_s`; at the end the
    block's time and the Spark jobs it launched (its jobs carry a job group of their own, which Spark's UI and
    status tracker show)."""
    sc = spark.sparkContext
    outer = sc.getLocalProperty("spark.jobGroup.id"), sc.getLocalProperty("spark.job.description")
    group = f"{label} #{len(_BLOCKS) + 1}-{uuid.uuid4().hex[:6]}"
    sc.setJobGroup(group, label)
    started_block = time.monotonic()
    stop = threading.Event()
    first_seen: dict[int, float] = {}

    def report() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(interval_s):
            for stage_id in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage_id)
                if info is None or info.numTasks == 0:
                    continue
                started = first_seen.setdefault(stage_id, time.monotonic())
                done, total = info.numCompletedTasks, info.numTasks
                elapsed = time.monotonic() - started
                eta = f"{elapsed / done * (total - done):.0f}s" if done else "?"
                log.info("%s: Spark stage %d: %d/%d tasks, %.0fs, ETA %s", label, stage_id, done, total, elapsed, eta)

    context = contextvars.copy_context()  # the thread's log lines name the run and the stage too
    thread = threading.Thread(target=context.run, args=(report,), name="spark-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        tracker = sc.statusTracker()
        jobs = tracker.getJobIdsForGroup(group)
        stages = {s for job in jobs if (info := tracker.getJobInfo(job)) for s in info.stageIds}
        block = SparkBlock(label, time.monotonic() - started_block, len(jobs), len(stages))
        _BLOCKS.append(block)
        log.info("%s: %.1fs, %d Spark jobs (%d Spark stages)", label, block.seconds, block.jobs, block.spark_stages)
        sc.setLocalProperty("spark.jobGroup.id", outer[0])  # None clears; an enclosing block's group comes back
        sc.setLocalProperty("spark.job.description", outer[1])
