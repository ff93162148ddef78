"""The Airflow DAGs: real Airflow parsing (DagBag), the task graph, rendered commands, and the main DAG run end to
end with dag.test() on a tiny synthetic run (real spark-submit, real DeepSpeed, real Delta tables)."""

import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """Offline Airflow: its own home, a sqlite database, the project's DAG folder, no examples. Set before import."""
    home = tmp_path_factory.mktemp("airflow")
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def dagbag(airflow_env):
    from airflow.models import DagBag
    from airflow.utils import db

    db.initdb()
    return DagBag(dag_folder=str(ROOT / "airflow_dags"))


def test_every_dag_parses_with_the_stage_graph(dagbag):
    from tslrec.pipeline import stage_names

    assert dagbag.import_errors == {}
    pipeline, refresh = dagbag.dags["tslrec_pipeline"], dagbag.dags["tslrec_refresh"]
    names = stage_names()
    assert [t.task_id for t in pipeline.topological_sort()] == names
    for upstream, downstream in zip(names, names[1:]):
        assert pipeline.get_task(downstream).upstream_task_ids == {upstream}
    assert [t.task_id for t in refresh.topological_sort()] == ["ingest", "sequences", "infer", "train"]
    kinds = {t.task_id: type(t).__name__ for t in pipeline.tasks}
    assert kinds["ingest"] == kinds["infer"] == "SparkSubmitOperator"
    assert kinds["sft"] == kinds["pretrain"] == "BashOperator"
    assert all(t.retries == 2 and t.execution_timeout is not None for t in pipeline.tasks)


def test_parsing_does_no_work(airflow_env):
    """Importing a DAG file loads neither torch nor Spark nor touches a lake."""
    import subprocess

    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'pyspark.sql', 'deepspeed', 'deltalake') if m in sys.modules))")
    for dag in ("tslrec_pipeline.py", "tslrec_refresh.py"):
        result = subprocess.run([sys.executable, "-c", code, str(ROOT / "airflow_dags" / dag)], capture_output=True,
                                text=True, cwd=airflow_env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_the_pipeline_dag_runs_end_to_end(dagbag, tmp_path):
    from tslrec.lake import Lake

    lake = tmp_path / "lake"
    overrides = [f"lake.root={lake}", f"llm.artifacts={tmp_path / 'artifacts'}", f"srs.checkpoints={tmp_path / 'checkpoints'}", "spark.profile=test",
                 "synthetic.users=60", "synthetic.items=40", "synthetic.users_per_partition=30", "srs.max_epochs=2",
                 "pregroup.k=4", "llm.model=tiny", "sft.max_steps=3", "train.variants=[base,tslrec]"]
    run = dagbag.dags["tslrec_pipeline"].test(run_conf={"dataset": "synthetic", "run_id": "airflow-1",
                                                           "overrides": overrides})
    assert run.state == "success"
    tables = Lake(str(lake))
    trained = tables.read_pandas("srs_training", where={"run_id": "airflow-1"})
    assert set(trained["variant"]) == {"base", "tslrec"}
    items = len(tables.read_arrow("item_index", where={"dataset": "synthetic"}))
    assert len(tables.read_arrow("llm_item_embeddings", where={"run_id": "airflow-1"})) == items > 0
    assert len(tables.read_arrow("models", where={"run_id": "airflow-1"})) == 1
    stages = tables.read_pandas("stage_runs", where={"run_id": "airflow-1"})
    assert sorted(stages["stage"]) == sorted(t.task_id for t in dagbag.dags["tslrec_pipeline"].tasks)
