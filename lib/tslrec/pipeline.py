"""The stage graph, shared by the CLI, the spark-submit jobs and the Airflow DAGs.

Stages pass nothing to each other but Delta tables: each reads what earlier stages wrote for the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from tslrec.context import RunContext
from tslrec.data import ingest, sequences
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger, stage_context

log = get_logger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], list[Written]]
    reads: tuple[str, ...]
    writes: tuple[str, ...]


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        ingest.run,
        reads=(),
        writes=("interactions", "quarantine", "user_index", "item_index", "ingest_report", "synthetic_categories"),
    ),
    Stage("sequences", sequences.run, reads=("interactions",), writes=("user_sequences", "dataset_stats")),
)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def select_stages(start: str | None = None, only: str | None = None) -> list[Stage]:
    for name in (start, only):
        if name is not None and name not in stage_names():
            raise TslrecError(f"unknown stage '{name}'; stages: {', '.join(stage_names())}")
    if only:
        return [s for s in STAGES if s.name == only]
    first = stage_names().index(start) if start else 0
    return list(STAGES[first:])


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    written: list[Written]


def run_stages(ctx: RunContext, stages: Sequence[Stage]) -> list[StageOutcome]:
    outcomes = []
    for stage in stages:
        with stage_context(ctx.run_id, stage.name):
            log.info("start (config %s, lake %s)", ctx.config_hash, ctx.lake.root)
            started = time.monotonic()
            written = stage.run(ctx)
            seconds = time.monotonic() - started
            ctx.spark.catalog.clearCache()
            log.info("done in %.1fs: %s", seconds, ", ".join(f"{w.table} v{w.version} ({w.rows} rows)" for w in written))
        outcomes.append(StageOutcome(stage.name, seconds, written))
    return outcomes
