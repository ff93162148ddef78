"""What a stage last ran on, so `tslrec run` can skip a stage whose inputs and settings have not changed.

A stage's signature is the hash of the config sections it uses, the Delta version of each table it reads as last
written for this run (or the run it reads from), and for ingest the input files as ingest's reader lists them
(path, size, modification time, and for local files a hash of the content), on any file system Spark reads.
Each successful stage appends its signature and the versions it wrote to the `stage_runs` table; a stage is skipped
when its last signature equals the current one and the last version of each table it writes committed by this
stage of the run is the one it recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterable, Mapping

import pyarrow as pa
from deltalake import DeltaTable

from tslrec.context import RunContext
from tslrec.data.input_files import input_files
from tslrec.lake import Written

TABLE = "stage_runs"


def signature(ctx: RunContext, sections: tuple[str, ...], reads: tuple[str, ...], stage: str) -> str:
    config = ctx.config.to_dict()
    parts: dict[str, Any] = {"config": {s: config[s] for s in sections},
                             "reads": read_versions(ctx, reads)}
    if stage == "ingest":
        parts["files"] = _input_files(ctx)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unchanged_since(ctx: RunContext, stage: str, current: str) -> str | None:
    """When the stage last ran with this signature, if the last version the run's stage committed to every table it
    wrote is still the one it recorded (a later run of the stage that died between two of its commits leaves a newer
    one; later stages may write the same tables), else None."""
    if not ctx.lake.exists(TABLE):
        return None
    rows = [r for r in ctx.lake.read_arrow(TABLE, where={"run_id": ctx.run_id}).to_pylist() if r["stage"] == stage]
    if not rows or rows[-1]["signature"] != current:
        return None
    written = json.loads(rows[-1]["written"]).items()
    if any(last_version_of_run(ctx, table, stage=stage) != version for table, version in written):
        return None
    return str(rows[-1]["finished_at"])


def record(ctx: RunContext, stage: str, current: str, seconds: float, written: list[Written]) -> None:
    row = {"run_id": ctx.run_id, "stage": stage, "signature": current, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
           "seconds": seconds, "written": json.dumps({w.table: w.version for w in written}),
           "config_hash": ctx.config_hash}
    ctx.lake.write(pa.Table.from_pylist([row]), TABLE, "replace_run", ctx.commit(stage), within={"stage": stage})


def read_versions(
    ctx: RunContext, reads: Iterable[str], runs: Mapping[str, str] | None = None
) -> dict[str, int | None]:
    """The version of each table a stage reads, as last written by this run or by the run `runs` names for it."""
    return {table: last_version_of_run(ctx, table, (runs or {}).get(table)) for table in reads}


def last_version_of_run(ctx: RunContext, table: str, run: str | None = None, stage: str | None = None) -> int | None:
    """The latest version of `table` committed by `run` (default this run), and with `stage` by that stage of it;
    other runs' writes do not count."""
    if not ctx.lake.exists(table):
        return None
    for commit in ctx.lake.history(table):
        if commit.get("tslrec.run_id") == (run or ctx.run_id) and stage in (None, commit.get("tslrec.stage")):
            return int(commit["version"])
    return ctx.lake.version(table)  # written by other runs only (e.g. the id registries or another run's vectors)


def _input_files(ctx: RunContext) -> list[tuple[str, int, int, str]]:
    """A Delta input is known by its version (a commit may drop files that stay on disk); a file behind a URI
    (s3a, abfss, ...) by its size and modification time: reading all of it on every `tslrec run` would cost as much
    as the ingest."""
    dataset = ctx.config.dataset
    if not dataset.path:
        return []
    if dataset.format == "delta":
        try:
            version = DeltaTable(dataset.path).version()
        except Exception:  # not a Delta table: ingest runs and says so
            version = -1
        return [(dataset.path, version, 0, "")]
    return [(f.name, f.size, f.modified, _content_hash(f.name) if f.local else "")
            for f in input_files(ctx.spark, dataset.path)]


def _content_hash(path: str) -> str:
    """Size and modification time miss an edit that keeps the size within one clock tick, and `cp -p`."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()
