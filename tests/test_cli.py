"""The commands as a user runs them: separate processes, real Spark, exit codes and printed output."""

import os
import subprocess
import sys
from pathlib import Path

from tslrec.lake import Lake
from tslrec.pipeline import stage_names

from conftest import ROOT, TEST_SPARK

BIN = Path(sys.executable).parent
SMALL = ["synthetic.users=60", "synthetic.items=40", "synthetic.users_per_partition=30", "srs.max_epochs=3",
         "pregroup.k=4", "llm.model=tiny"]


def tslrec(*args, cwd=ROOT):
    return subprocess.run([BIN / "tslrec", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_run_prints_a_summary_and_a_second_run_replaces_the_run(tmp_path):
    lake = tmp_path / "lake"
    args = ["run", f"lake.root={lake}", f"llm.artifacts={tmp_path / 'artifacts'}", f"srs.checkpoints={tmp_path / 'checkpoints'}", f"run.reports={tmp_path}",
            *TEST_SPARK, *SMALL]
    first = tslrec(*args)
    assert first.returncode == 0, first.stderr
    assert "model synthetic-user-" in first.stdout and f"report: {tmp_path / 'synthetic.html'}" in first.stdout
    page = (tmp_path / "synthetic.html").read_text()
    assert "not in the lake for this run" not in page  # every section is filled
    for part in ("<b>", "HR@10", "NDCG@10", "C1", "<svg", "held-out MSE", "item_pregroups v0",
                 "k-means pre-groups of the stage-0 vectors: all items", "top-1 inferred category: all items"):
        assert part in page, part
    assert "run synthetic (config" in first.stdout and str(lake) in first.stdout
    for table in ("interactions", "quarantine", "user_sequences", "dataset_stats"):
        assert table in first.stdout
    assert "[run=synthetic stage=ingest]" in first.stderr and "[run=synthetic stage=sequences]" in first.stderr
    second = tslrec(*args)
    assert second.returncode == 0, second.stderr
    summary = second.stdout.split("finished")[1]
    for stage in stage_names():  # nothing changed: every stage is skipped and no table gets a new version
        assert f"{stage:<10}  skipped" in summary
    assert "skipped: its settings and inputs are unchanged" in second.stderr
    assert Lake(str(lake)).version("user_sequences") == 0
    changed = tslrec("run", "--until", "pretrain", f"lake.root={lake}", *TEST_SPARK, *SMALL, "sequences.short_users=drop")
    assert changed.returncode == 0, changed.stderr
    summary = changed.stdout.split("finished")[1]
    assert "ingest      skipped" in summary and "sequences   skipped" not in summary
    assert "pretrain    skipped" not in summary  # its input changed
    forced = tslrec("run", "--only", "sequences", "--force", f"lake.root={lake}", *TEST_SPARK, *SMALL)
    assert forced.returncode == 0 and "ingest " not in forced.stdout.split("finished")[1]
    assert Lake(str(lake)).version("user_sequences") == 2
    assert Lake(str(lake)).read_arrow("user_sequences").num_rows == 60
    listing = tslrec("tables", f"lake.root={lake}")
    assert "user_sequences" in listing.stdout and "run synthetic stage sequences" in listing.stdout


def test_config_errors_exit_2_naming_the_key_without_a_traceback():
    result = tslrec("run", "ingest.kcore.usr=3")
    assert result.returncode == 2
    assert "unknown key 'ingest.kcore.usr'; allowed keys in 'ingest.kcore': user, item, max_iterations" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_and_stages_commands():
    shown = tslrec("config", "--dataset", "beauty", "run.id=b1")
    assert shown.returncode == 0 and "format: user_items" in shown.stdout and "# run id: b1" in shown.stdout
    stages = tslrec("stages")
    assert stages.stdout.splitlines()[0].startswith("ingest")


def test_jobs_run_under_spark_submit_with_its_master(tmp_path):
    lake = tmp_path / "lake"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    for job in ("ingest", "sequences"):
        result = subprocess.run(
            [BIN / "spark-submit", "--master", "local[1]", str(ROOT / "jobs" / f"{job}.py"), f"lake.root={lake}",
             "spark.profile=test", *SMALL],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "up on local[1]" in result.stdout  # spark-submit hands the Python process's stderr to its stdout
    assert Lake(str(lake)).read_arrow("user_sequences").num_rows == 60


def test_synth_writes_an_event_log_that_ingests(tmp_path):
    out = tmp_path / "log"
    made = tslrec("synth", "--out", str(out), *TEST_SPARK, *SMALL)
    assert made.returncode == 0, made.stderr
    lake = tmp_path / "lake"
    ran = tslrec("ingest", f"lake.root={lake}", "dataset.format=parquet", f"dataset.path={out}", *TEST_SPARK)
    assert ran.returncode == 0, ran.stderr
    report = Lake(str(lake)).read_arrow("ingest_report").to_pylist()[0]
    assert report["malformed"] == 0 and report["users"] == 60
    kept = sorted(out.rglob("*"))
    again = tslrec("synth", "--out", str(out), *TEST_SPARK, *SMALL)
    assert again.returncode == 2 and "already exists and would be replaced; choose another path or add --force" in again.stderr
    assert sorted(out.rglob("*")) == kept
