"""The stage graph, shared by the CLI, the jobs and the Airflow DAGs.

Stages pass nothing to each other but Delta tables: each reads what earlier stages wrote for the same run.
Importing this module is cheap (the stages' code loads when a stage runs), so a scheduler can parse the graph.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from tslrec.errors import TslrecError
from tslrec.logs import get_logger, stage_context

if TYPE_CHECKING:
    from tslrec.context import RunContext
    from tslrec.lake import Written

log = get_logger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function", the function taking a RunContext
    kind: Literal["spark", "torch", "deepspeed"]  # how a scheduler launches its job: spark-submit, python, a launcher
    job: str  # its entry point under jobs/
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    settings: tuple[str, ...]  # the config sections that shape what it writes

    @property
    def run(self) -> Callable[[RunContext], list[Written]]:
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "tslrec.data.ingest:run",
        "spark",
        "ingest.py",
        reads=(),
        writes=("interactions", "quarantine", "user_index", "item_index", "ingest_report", "synthetic_categories"),
        settings=("dataset", "ingest", "synthetic"),
    ),
    Stage(
        "sequences",
        "tslrec.data.sequences:run",
        "spark",
        "sequences.py",
        reads=("interactions",),
        writes=("user_sequences", "dataset_stats"),
        settings=("sequences",),
    ),
    Stage(
        "pretrain",
        "tslrec.srs.stages:pretrain",
        "torch",
        "pretrain.py",
        reads=("user_sequences",),
        writes=("srs_item_embeddings", "srs_metrics", "srs_training"),
        settings=("srs", "pretrain"),
    ),
    Stage(
        "pregroup",
        "tslrec.grouping.pregroup:run",
        "spark",
        "pregroup.py",
        reads=("srs_item_embeddings",),
        writes=("item_pregroups", "item_pregroup_centres"),
        settings=("pregroup", "pretrain"),
    ),
    Stage(
        "preferences",
        "tslrec.grouping.preferences:run",
        "spark",
        "preferences.py",
        reads=("user_sequences", "item_pregroups", "item_pregroup_centres"),
        writes=("user_preferences",),
        settings=(),
    ),
    Stage(
        "sft",
        "tslrec.llm.sft:run",
        "deepspeed",
        "sft.py",
        reads=("user_sequences", "user_preferences", "item_index", "item_pregroups", "item_pregroup_centres",
               "srs_item_embeddings"),
        writes=("models",),
        settings=("llm", "sft", "pregroup", "pretrain"),
    ),
    Stage(
        "infer",
        "tslrec.llm.infer:run",
        "spark",
        "infer_items.py",
        reads=("models", "item_index", "srs_item_embeddings", "item_pregroups", "item_pregroup_centres"),
        writes=("llm_item_embeddings", "item_categories"),
        settings=("llm", "sft", "infer"),
    ),
    Stage(
        "train",
        "tslrec.srs.stages:train",
        "torch",
        "train_srs.py",
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
    from tslrec import stage_runs

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
