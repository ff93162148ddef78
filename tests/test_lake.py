import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from pyspark.sql import functions as F

from tslrec.errors import TslrecError
from tslrec.lake import Commit, Lake

from conftest import ROOT, TEST_SPARK

COMMIT = Commit("r1", "test", "hash1")


@pytest.fixture
def lake(tmp_path):
    return Lake(str(tmp_path / "lake"), rows_per_file=10)


def frame(spark, run_id="r1", n=100, offset=0):
    return spark.range(offset, offset + n, numPartitions=3).select(
        F.lit(run_id).alias("run_id"),
        F.col("id").cast("int").alias("x"),
        F.array((F.col("id") / 7).cast("float"), F.lit(-0.1).cast("float")).alias("vector"),
        F.timestamp_seconds(F.col("id") * 1000).alias("at"),
        F.concat(F.lit("k"), (F.col("id") % 4).cast("string")).alias("key"),
    )


def sorted_rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_spark_write_is_one_commit_read_back_everywhere(spark, lake):
    source = frame(spark)
    written = lake.write(source, "t", "create", COMMIT)
    assert (written.version, written.rows) == (0, 100)
    assert sorted_rows(lake.read_spark(spark, "t")) == sorted_rows(source)
    table = DeltaTable(lake.uri("t"))
    assert table.version() == 0 and table.count() == 100
    # rows_per_file=10 split each task's output, and all files went into that single commit
    assert len(table.file_uris()) > 3
    assert lake.read_arrow("t").num_rows == 100
    assert lake.sql("SELECT sum(x) AS s FROM t")["s"][0].as_py() == sum(range(100))
    # columns without file statistics (strings, timestamps, floats from Spark) filter like any other
    assert lake.sql("SELECT count(*) AS n FROM t WHERE key = 'k1' AND \"at\" > TIMESTAMPTZ '1970-01-01 10:00:00+00' "
                    "AND vector[1] > 1.0")["n"][0].as_py() == len([i for i in range(100) if i % 4 == 1 and i >= 37
                                                                   and i / 7 > 1.0])
    via_delta_rs = QueryBuilder().register("t", table).execute("SELECT count(*) AS n FROM t").read_all()
    assert via_delta_rs.column("n")[0].as_py() == 100
    info = lake.history("t", 1)[0]
    assert (info["tslrec.run_id"], info["tslrec.stage"], info["tslrec.config_hash"]) == ("r1", "test", "hash1")


def test_float_vectors_round_trip_bit_exactly(spark, lake):
    lake.write(frame(spark), "t", "create", COMMIT)
    back = lake.read_arrow("t").sort_by("x")
    expected = (np.arange(100) / 7).astype(np.float32)
    got = np.array([v[0] for v in back.column("vector").to_pylist()], dtype=np.float32)
    assert got.tobytes() == expected.tobytes()


def test_replace_run_touches_only_its_run_and_is_idempotent(spark, lake):
    lake.write(frame(spark, "r1"), "t", "replace_run", COMMIT)
    lake.write(frame(spark, "r2", offset=1000), "t", "replace_run", Commit("r2", "test", "h"))
    before = sorted_rows(lake.read_spark(spark, "t"))
    again = lake.write(frame(spark, "r1"), "t", "replace_run", COMMIT)
    assert again.version == 2
    assert sorted_rows(lake.read_spark(spark, "t")) == before
    assert lake.read_spark(spark, "t", where={"run_id": "r2"}).count() == 100
    smaller = lake.write(frame(spark, "r1", n=10), "t", "replace_run", COMMIT)
    assert smaller.rows == 10
    assert lake.read_arrow("t", where={"run_id": "r1"}).num_rows == 10
    assert lake.read_arrow("t", where={"run_id": "r2"}).num_rows == 100


def test_replace_run_refuses_rows_of_another_run(spark, lake):
    with pytest.raises(TslrecError, match="rows of run_id='r1' in table 't' got rows of other run_id: \\['r2'\\]"):
        lake.write(frame(spark, "r2"), "t", "replace_run", COMMIT)
    assert not lake.exists("t")


def test_modes_create_append_overwrite(spark, lake):
    lake.write(frame(spark, n=10), "t", "create", COMMIT)
    with pytest.raises(TslrecError, match="already exists"):
        lake.write(frame(spark, n=10), "t", "create", COMMIT)
    lake.write(frame(spark, n=10, offset=10), "t", "append", COMMIT)
    assert lake.read_arrow("t").num_rows == 20
    lake.write(frame(spark, n=5), "t", "overwrite", COMMIT)
    assert lake.read_arrow("t").num_rows == 5
    assert lake.version("t") == 2


def test_old_versions_stay_readable(spark, lake):
    lake.write(frame(spark, n=10), "t", "create", COMMIT)
    lake.write(frame(spark, n=30), "t", "overwrite", COMMIT)
    assert lake.read_spark(spark, "t", version=0).count() == 10
    assert lake.read_arrow("t", version=0).num_rows == 10
    assert lake.read_spark(spark, "t").count() == 30
    with pytest.raises(TslrecError, match="no version 7"):
        lake.read_arrow("t", version=7)


def test_arrow_and_pandas_writes_share_the_modes(lake):
    rows = pa.table({"run_id": ["r1", "r1"], "value": [1.5, 2.5]})
    lake.write(rows, "small", "replace_run", COMMIT)
    lake.write(rows.to_pandas().iloc[:1], "small", "replace_run", COMMIT)
    assert lake.read_pandas("small")["value"].tolist() == [1.5]
    assert lake.version("small") == 1
    assert lake.history("small", 1)[0]["tslrec.run_id"] == "r1"


def test_column_max_from_file_statistics_per_partition_and_by_reading_without_them(spark, lake, tmp_path):
    lake.write(frame(spark, n=100), "numbers", "replace_run", COMMIT)  # 10 files from Spark, with statistics
    lake.write(frame(spark, run_id="r2", n=5, offset=500), "numbers", "replace_run", Commit("r2", "test", "h"))
    assert lake.column_max("numbers", "x") == 504
    assert lake.column_max("numbers", "x", where={"run_id": "r1"}) == 99
    assert lake.column_max("numbers", "x", version=0) == 99
    assert lake.column_max("numbers", "x", where={"run_id": "r3"}) is None
    bare = Lake(str(tmp_path / "bare"))
    write_deltalake(bare.uri("numbers"), pa.table({"run_id": ["r1"] * 3, "x": [4, 9, 2]}), partition_by=["run_id"],
                    configuration={"delta.dataSkippingNumIndexedCols": "0"})
    assert "max.x" not in pa.table(bare.table("numbers").get_add_actions(flatten=True)).column_names
    assert bare.column_max("numbers", "x", where={"run_id": "r1"}) == 9


def test_schema_change_is_refused_with_both_schemas(spark, lake):
    lake.write(frame(spark, n=5), "t", "create", COMMIT)
    with pytest.raises(TslrecError, match="x: int32.*x: string"):
        lake.write(frame(spark, n=5).withColumn("x", F.col("x").cast("string")), "t", "append", COMMIT)


def test_missing_table_and_bad_filter_are_clear(spark, lake):
    with pytest.raises(TslrecError, match="table 'nope' does not exist"):
        lake.read_arrow("nope")
    lake.write(frame(spark, n=5), "t", "create", COMMIT)
    with pytest.raises(TslrecError, match="partition columns \\(run_id\\), not by 'x'"):
        lake.read_arrow("t", where={"x": "1"})


def test_empty_table_reads_as_empty_frame_with_schema(spark, lake):
    lake.write(frame(spark, n=0), "t", "create", COMMIT)
    df = lake.read_spark(spark, "t")
    assert df.count() == 0 and df.columns == ["run_id", "x", "vector", "at", "key"]


def test_write_that_fails_midway_leaves_previous_version_and_no_files(spark, lake):
    lake.write(frame(spark), "t", "replace_run", COMMIT)
    files_before = sorted(p.name for p in Path(lake.uri("t")).rglob("*.parquet"))

    @F.udf("int")
    def explode_on_77(x):
        if x == 77:
            raise ValueError("boom")
        return x

    broken = frame(spark).withColumn("x", explode_on_77("x"))
    with pytest.raises(Exception, match="boom"):
        lake.write(broken, "t", "replace_run", COMMIT)
    assert lake.version("t") == 0
    assert lake.read_arrow("t").num_rows == 100
    assert sorted(p.name for p in Path(lake.uri("t")).rglob("*.parquet")) == files_before


def test_a_failure_after_the_commit_landed_keeps_the_files_of_the_live_version(spark, lake, monkeypatch):
    lake.write(frame(spark, n=5), "t", "replace_run", COMMIT)
    commit_files = Lake._commit_files

    def commit_then_fail(self, *args, **kwargs):
        commit_files(self, *args, **kwargs)
        raise KeyboardInterrupt  # e.g. a Ctrl-C between the commit and the return

    monkeypatch.setattr(Lake, "_commit_files", commit_then_fail)
    with pytest.raises(KeyboardInterrupt):
        lake.write(frame(spark, n=7), "t", "replace_run", COMMIT)
    assert lake.version("t") == 1
    assert all(Path(uri).is_file() for uri in DeltaTable(lake.uri("t")).file_uris())
    assert lake.read_arrow("t").num_rows == 7


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pyspark.sql import functions as F
    from tslrec.config import load_config
    from tslrec.lake import Commit, Lake
    from tslrec.spark import get_spark

    spark = get_spark(load_config(overrides=sys.argv[2:]).spark)

    @F.udf("int")
    def stall(x):
        if x >= 150:
            time.sleep(600)
        return x

    rows = spark.range(0, 200, numPartitions=2).select(F.lit("r1").alias("run_id"), stall("id").alias("x"))
    Lake(sys.argv[1]).write(rows, "t", "replace_run", Commit("r1", "killed", "h"))
    """
)


def test_killed_writer_leaves_previous_version_readable(spark, lake, tmp_path):
    lake.write(spark.range(5).select(F.lit("r1").alias("run_id"), F.col("id").cast("int").alias("x")), "t",
               "replace_run", COMMIT)
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    child = subprocess.Popen([sys.executable, str(script), lake.root, *TEST_SPARK], env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = Path(lake.uri("t"))
    deadline = time.monotonic() + 120
    try:
        # the first task (rows 0-99) closes its file while the second one stalls, so no commit can happen
        while not any(_complete(p) for p in table.rglob("part-00000-*.parquet")):
            assert child.poll() is None, "the writer ended before it could be killed"
            assert time.monotonic() < deadline, "the writer wrote no file in time"
            time.sleep(0.5)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert len(list(table.rglob("*.parquet"))) > 1  # the dead write left a file behind ...
    assert lake.version("t") == 0  # ... that no version refers to
    assert sorted(lake.read_arrow("t")["x"].to_pylist()) == [0, 1, 2, 3, 4]
    assert lake.read_spark(spark, "t").count() == 5
    removed = lake.vacuum("t", retention_hours=0)
    assert removed and all("-a0-" in name for name in removed)
    assert {str(p) for p in table.rglob("*.parquet")} == set(DeltaTable(lake.uri("t")).file_uris())
    after_vacuum = lake.version("t")
    again = lake.write(spark.range(3).select(F.lit("r1").alias("run_id"), F.col("id").cast("int").alias("x")), "t",
                       "replace_run", COMMIT)
    assert again.version == after_vacuum + 1 and lake.read_arrow("t").num_rows == 3


def test_names_lists_tables(spark, lake):
    assert lake.names() == []
    lake.write(frame(spark, n=1), "b_table", "create", COMMIT)
    lake.write(pa.table({"run_id": ["r1"], "v": [1]}), "a_table", "create", COMMIT)
    assert lake.names() == ["a_table", "b_table"]


def _complete(path: Path) -> bool:
    try:
        return pq.read_metadata(path).num_rows == 100
    except Exception:
        return False


def test_a_kept_read_filters_batch_by_batch_within_the_selected_partitions(spark, lake):
    lake.write(frame(spark, "r1", n=30), "t", "replace_run", COMMIT)
    lake.write(frame(spark, "r2", n=20, offset=100), "t", "replace_run", Commit("r2", "test", "h"))
    seen = []

    def odd(batch):
        seen.append(batch.num_rows)
        return batch.column("x").to_numpy() % 2 == 1

    kept = lake.read_arrow("t", where={"run_id": "r2"}, columns=["x"], keep=odd)
    assert len(seen) > 1 and sum(seen) == 20  # rows_per_file=10: several batches, only run r2's
    assert kept.schema.names == ["x"] and sorted(kept.column("x").to_pylist()) == list(range(101, 120, 2))
    nothing = lake.read_arrow("t", where={"run_id": "r2"}, columns=["x"], keep=lambda b: np.zeros(b.num_rows, bool))
    assert nothing.num_rows == 0 and nothing.schema.names == ["x"]


def test_a_write_may_add_or_lack_columns_but_not_change_them(lake):
    """Rows of a release that records more (y) or fewer (x) columns than the table's: the rows without one read null."""
    lake.write(pa.table({"run_id": ["a", "b"], "x": [1, 2]}), "t", "create", Commit("a", "test", "h"))
    lake.write(pa.table({"x": [3], "run_id": ["a"], "y": ["new"]}), "t", "replace_run", Commit("a", "test", "h"))
    rows = sorted(lake.read_arrow("t").to_pylist(), key=lambda r: r["run_id"])
    assert rows == [{"x": 3, "run_id": "a", "y": "new"}, {"x": 2, "run_id": "b", "y": None}]
    with pytest.raises(TslrecError, match="x: int64.*x: string"):
        lake.write(pa.table({"run_id": ["b"], "x": ["2"], "y": ["z"]}), "t", "append", Commit("b", "test", "h"))
    lake.write(pa.table({"run_id": ["c"], "y": ["older"]}), "t", "replace_run", Commit("c", "test", "h"))
    assert lake.read_arrow("t", where={"run_id": "c"}).to_pylist() == [{"x": None, "run_id": "c", "y": "older"}]
    assert lake.read_arrow("t").num_rows == 3


def test_sql_refuses_writes_hidden_in_reads_and_names_parse_errors(lake):
    lake.write(pa.table({"run_id": ["r"], "x": [1]}), "t", "replace_run", Commit("r", "test", "h"))
    assert lake.sql("SELECT 'insert' AS word, x FROM t -- delete").to_pylist() == [{"word": "insert", "x": 1}]
    assert lake.sql("EXPLAIN SELECT x FROM t").num_rows >= 1
    for statement, named in (("EXPLAIN ANALYZE DELETE FROM t", "ANALYZE, DELETE"),
                             ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "DELETE"),
                             ("EXPLAIN ANALYZE CREATE TABLE u AS SELECT 1", "ANALYZE, CREATE")):
        with pytest.raises(TslrecError, match=f"read-only.*with {named}"):
            lake.sql(statement)
    with pytest.raises(TslrecError, match="the query does not parse: Parser Error: syntax error"):
        lake.sql("SELEC x FROM t")
    assert lake.read_arrow("t").num_rows == 1


def test_a_progress_block_counts_its_spark_jobs_and_restores_the_enclosing_group(spark):
    from tslrec.spark import finished_blocks, spark_progress

    context = spark.sparkContext
    with spark_progress(spark, "outer", 60):
        with spark_progress(spark, "inner", 60):
            spark.range(10).count()
            spark.range(5).collect()
        assert context.getLocalProperty("spark.job.description") == "outer"
        spark.range(3).count()
    inner, outer = finished_blocks()[-2:]
    assert (inner.label, inner.jobs) == ("inner", 2) and (outer.label, outer.jobs) == ("outer", 1)
    assert inner.spark_stages >= inner.jobs and inner.seconds > 0
    assert context.getLocalProperty("spark.jobGroup.id") is None
