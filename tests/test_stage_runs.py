"""A stage is skipped only over the table versions its last successful run wrote, and only over the same input."""

import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tslrec import stage_runs
from tslrec.config import load_config
from tslrec.context import RunContext

from conftest import TEST_SPARK


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


@pytest.mark.parametrize("as_uri", [False, True])
def test_an_edit_that_keeps_size_and_modification_time_changes_the_ingest_signature(spark, tmp_path, as_uri):
    """Also for a path written as a URI (file:// here; s3a:// and the like go the same way through Spark's file
    system), which once left the input out of the signature: an edited input was not ingested again."""
    folder = tmp_path / "logs"
    folder.mkdir()
    log = folder / "log.txt"
    log.write_text("1 10 20\n2 30 40\n")
    (folder / "_SUCCESS").write_text("")  # a marker the reader skips: not an input
    path = folder.as_uri() if as_uri else str(folder)
    ctx = RunContext(load_config(overrides=[*TEST_SPARK, f"lake.root={tmp_path / 'lake'}", f"dataset.path={path}",
                                            "dataset.format=user_items"]))
    before = stage_runs.signature(ctx, ("dataset",), (), "ingest")
    (folder / "_SUCCESS").write_text("written again")
    assert stage_runs.signature(ctx, ("dataset",), (), "ingest") == before
    stat = log.stat()
    log.write_text("1 10 20\n2 30 41\n")  # same size
    os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` leaves it
    assert log.stat().st_mtime_ns == stat.st_mtime_ns
    assert stage_runs.signature(ctx, ("dataset",), (), "ingest") != before


def test_a_delta_input_is_known_by_its_version(tmp_path):
    source = tmp_path / "events"
    write_deltalake(str(source), pa.table({"user": ["1", "2"], "item": ["10", "30"]}))
    ctx = RunContext(load_config(overrides=[f"lake.root={tmp_path / 'lake'}", f"dataset.path={source}",
                                            "dataset.format=delta"]))
    before = stage_runs.signature(ctx, ("dataset",), (), "ingest")
    assert stage_runs.signature(ctx, ("dataset",), (), "ingest") == before
    DeltaTable(str(source)).delete("user = '2'")  # a commit that may leave the data files as they are
    assert stage_runs.signature(ctx, ("dataset",), (), "ingest") != before
