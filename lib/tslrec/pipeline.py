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
from tslrec.grouping import pregroup, preferences
from tslrec import stage_runs
from tslrec.lake import Written
from tslrec.llm import infer, sft
from tslrec.srs import stages as srs_stages
from tslrec.logs import get_logger, stage_context

log = get_logger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], list[Written]]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    settings: tuple[str, ...]  # the config sections that shape what it writes


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        ingest.run,
        reads=(),
        writes=("interactions", "quarantine", "user_index", "item_index", "ingest_report", "synthetic_categories"),
        settings=("dataset", "ingest", "synthetic"),
    ),
    Stage(
        "sequences",
        sequences.run,
        reads=("interactions",),
        writes=("user_sequences", "dataset_stats"),
        settings=("sequences",),
    ),
    Stage(
        "pretrain",
        srs_stages.pretrain,
        reads=("user_sequences",),
        writes=("srs_item_embeddings", "srs_metrics", "srs_training"),
        settings=("srs", "pretrain"),
    ),
    Stage(
        "pregroup",
        pregroup.run,
        reads=("srs_item_embeddings",),
        writes=("item_pregroups", "item_pregroup_centres"),
        settings=("pregroup", "pretrain"),
    ),
    Stage(
        "preferences",
        preferences.run,
        reads=("user_sequences", "item_pregroups", "item_pregroup_centres"),
        writes=("user_preferences",),
        settings=(),
    ),
    Stage(
        "sft",
        sft.run,
        reads=("user_sequences", "user_preferences", "item_pregroups", "item_pregroup_centres", "srs_item_embeddings"),
        writes=("models",),
        settings=("llm", "sft", "pregroup", "pretrain"),
    ),
    Stage(
        "infer",
        infer.run,
        reads=("models", "item_index", "srs_item_embeddings", "item_pregroups", "item_pregroup_centres"),
        writes=("llm_item_embeddings", "item_categories"),
        settings=("llm", "sft", "infer"),
    ),
    Stage(
        "train",
        srs_stages.train,
        reads=("user_sequences", "item_pregroups", "llm_item_embeddings"),
        writes=("srs_metrics", "srs_training"),
        settings=("srs", "train"),
    ),
)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def select_stages(start: str | None = None, only: str | None = None, until: str | None = None) -> list[Stage]:
    """All stages; or from `start`, and/or up to `until` (both included); or `only` one."""
    for name in (start, only, until):
        if name is not None and name not in stage_names():
            raise TslrecError(f"unknown stage '{name}'; stages: {', '.join(stage_names())}")
    if only:
        return [s for s in STAGES if s.name == only]
    first = stage_names().index(start) if start else 0
    last = stage_names().index(until) if until else len(STAGES) - 1
    return list(STAGES[first:last + 1])


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    written: list[Written]
    skipped: bool = False


def run_stages(ctx: RunContext, stages: Sequence[Stage], skip_unchanged: bool = False) -> list[StageOutcome]:
    """Runs the stages in order; with skip_unchanged, a stage whose config sections and input tables are as they
    were at its last successful run is skipped. Every successful stage records what it ran on."""
    outcomes = []
    for stage in stages:
        with stage_context(ctx.run_id, stage.name):
            current = stage_runs.signature(ctx, stage.settings, stage.reads, stage.name)
            since = stage_runs.unchanged_since(ctx, stage.name, current) if skip_unchanged else None
            if since:
                log.info("skipped: its settings and inputs are unchanged since its run at %s (--force runs it)", since)
                outcomes.append(StageOutcome(stage.name, 0.0, [], skipped=True))
                continue
            log.info("start (config %s, lake %s)", ctx.config_hash, ctx.lake.root)
            started = time.monotonic()
            written = stage.run(ctx)
            seconds = time.monotonic() - started
            ctx.release_cached_data()
            stage_runs.record(ctx, stage.name, current, seconds, written)
            log.info("done in %.1fs: %s", seconds, ", ".join(f"{w.table} v{w.version} ({w.rows} rows)" for w in written))
        outcomes.append(StageOutcome(stage.name, seconds, written))
    return outcomes
