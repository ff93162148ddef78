"""What a stage last ran on, so `tslrec run` can skip a stage whose inputs and settings have not changed.

A stage's signature is the hash of the config sections it uses, the Delta version of each table it reads as last
written for this run (or the run it reads from), and for ingest the input files (path, size, modification time).
Each successful stage appends its signature to the `stage_runs` table; a stage is skipped when its last signature
equals the current one and every table it writes still holds this run's rows.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from typing import Any

import pyarrow as pa

from tslrec.context import RunContext
from tslrec.lake import Written

TABLE = "stage_runs"


def signature(ctx: RunContext, sections: tuple[str, ...], reads: tuple[str, ...], stage: str) -> str:
    config = ctx.config.to_dict()
    parts: dict[str, Any] = {"config": {s: config[s] for s in sections},
                             "reads": {t: last_version_of_run(ctx, t) for t in reads}}
    if stage == "ingest":
        parts["files"] = _input_files(ctx)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unchanged_since(ctx: RunContext, stage: str, current: str) -> str | None:
    """When the stage last ran with this signature (if every table it wrote is still there), else None."""
    if not ctx.lake.exists(TABLE):
        return None
    rows = [r for r in ctx.lake.read_arrow(TABLE, where={"run_id": ctx.run_id}).to_pylist() if r["stage"] == stage]
    if not rows or rows[-1]["signature"] != current:
        return None
    if not all(ctx.lake.exists(table) for table in json.loads(rows[-1]["written"])):
        return None
    return str(rows[-1]["finished_at"])


def record(ctx: RunContext, stage: str, current: str, seconds: float, written: list[Written]) -> None:
    row = {"run_id": ctx.run_id, "stage": stage, "signature": current, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
           "seconds": seconds, "written": json.dumps({w.table: w.version for w in written}),
           "config_hash": ctx.config_hash}
    ctx.lake.write(pa.Table.from_pylist([row]), TABLE, "replace_run", ctx.commit(stage), within={"stage": stage})


def last_version_of_run(ctx: RunContext, table: str, run: str | None = None) -> int | None:
    """The latest version of `table` committed by `run` (default this run); other runs' writes do not count."""
    if not ctx.lake.exists(table):
        return None
    for commit in ctx.lake.history(table):
        if commit.get("tslrec.run_id") == (run or ctx.run_id):
            return int(commit["version"])
    return ctx.lake.version(table)  # written by other runs only (e.g. the id registries or another run's vectors)


def _input_files(ctx: RunContext) -> list[tuple[str, int, int]]:
    path = ctx.config.dataset.path
    if not path or "://" in path:
        return []
    files = sorted(f for pattern in (path, os.path.join(path, "**", "*")) for f in glob.glob(pattern, recursive=True)
                   if os.path.isfile(f))
    return [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in dict.fromkeys(files)]
