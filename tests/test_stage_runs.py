"""A stage is skipped only over the table versions its last successful run wrote, and only over the same input."""

import os

import pyarrow as pa

from tslrec import stage_runs
from tslrec.config import load_config
from tslrec.context import RunContext


def test_a_newer_version_left_by_a_failed_rerun_makes_the_stage_run_again(tmp_path):
    ctx = RunContext(load_config(overrides=[f"lake.root={tmp_path / 'lake'}"]))

    def write(table, rows):
        return ctx.lake.write(pa.table({"run_id": [ctx.run_id] * rows, "x": list(range(rows))}), table, "replace_run",
                              ctx.commit("two_tables"))

    written = [write("first", 3), write("second", 3)]
    stage_runs.record(ctx, "two_tables", "signature", 1.0, written)
    assert stage_runs.unchanged_since(ctx, "two_tables", "signature") is not None
    assert stage_runs.unchanged_since(ctx, "two_tables", "another signature") is None
    ctx.lake.write(pa.table({"run_id": [ctx.run_id], "x": [9]}), "first", "append", ctx.commit("later_stage"))
    assert stage_runs.unchanged_since(ctx, "two_tables", "signature") is not None  # another stage's write
    write("first", 4)  # a re-run of the stage that committed its first table, then died
    assert stage_runs.unchanged_since(ctx, "two_tables", "signature") is None


def test_an_edit_that_keeps_size_and_modification_time_changes_the_ingest_signature(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("1 10 20\n2 30 40\n")
    ctx = RunContext(load_config(overrides=[f"lake.root={tmp_path / 'lake'}", f"dataset.path={log}",
                                            "dataset.format=user_items"]))
    before = stage_runs.signature(ctx, ("dataset",), (), "ingest")
    stat = log.stat()
    log.write_text("1 10 20\n2 30 41\n")  # same size
    os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` leaves it
    assert log.stat().st_mtime_ns == stat.st_mtime_ns
    assert stage_runs.signature(ctx, ("dataset",), (), "ingest") != before
