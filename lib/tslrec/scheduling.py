"""Airflow tasks for the stages of `pipeline.STAGES`, shared by the DAGs in airflow_dags/.

Spark stages run as SparkSubmitOperator tasks (the connection id from TSLREC_SPARK_CONN_ID, default spark_default);
the torch stages (pretrain, train) as a Python process; the SFT through a launcher (the `sft_launcher` param:
python by default, which starts sft.processes workers itself, or e.g. `deepspeed --num_gpus 8`). Every task gets
the DAG run's params as the stage command's options: --dataset, run.id and key=value overrides. Building the
tasks does no work: nothing is read or computed until a task runs.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseOperator, Param

from tslrec.pipeline import Stage

PROJECT = Path(os.environ.get("TSLREC_HOME") or Path(__file__).resolve().parents[2])
TIMEOUTS = {"spark": timedelta(hours=4), "torch": timedelta(hours=24), "deepspeed": timedelta(hours=48)}
DATED_RUN = "(params.run_id or (params.dataset ~ '-' ~ ds))"  # Jinja: the run id param, else <dataset>-<run date>


def tslrec_dag(dag_id: str, schedule: str | None, doc: str | None) -> DAG:
    """A DAG with the runs' params, retries and native template rendering, which stage_task's Spark arguments need."""
    params = {
        "dataset": Param("synthetic", type="string", description="conf/datasets/<name>.yaml"),
        "run_id": Param("", type="string", description="the run id; empty: the DAG's default"),
        "overrides": Param([], type="array", description="key=value config overrides"),
        "python": Param(sys.executable, type="string", description="the project's Python on the workers"),
        "sft_launcher": Param(sys.executable, type="string",
                              description="what starts jobs/sft.py: python, torchrun ..., deepspeed --num_gpus N"),
    }
    return DAG(dag_id=dag_id, schedule=schedule, catchup=False, params=params,
               default_args={"retries": 2, "retry_delay": timedelta(minutes=2)}, render_template_as_native_obj=True,
               max_active_runs=1, tags=["tslrec"], doc_md=doc)


def stage_task(stage: Stage, *extra: str, run_id: str = DATED_RUN) -> BaseOperator:
    """The task running one stage for the DAG run's params; `extra` overrides are fixed by the DAG, `run_id` is a
    Jinja expression for the run id."""
    job = str(PROJECT / "jobs" / stage.job)
    if stage.kind == "spark":
        return SparkSubmitOperator(
            task_id=stage.name,
            application=job,
            application_args=f"{{{{ ['--dataset', params.dataset, 'run.id=' ~ {run_id}] + {list(extra)!r} "
                             "+ params.overrides }}",
            conn_id=os.environ.get("TSLREC_SPARK_CONN_ID", "spark_default"),
            conf={"spark.pyspark.python": "{{ params.python }}", "spark.pyspark.driver.python": "{{ params.python }}"},
            name=f"tslrec-{stage.name}",
            execution_timeout=TIMEOUTS[stage.kind],
        )
    launcher = "{{ params.sft_launcher }}" if stage.kind == "deepspeed" else "{{ params.python }}"
    options = " ".join(f"'{o}'" for o in ("--dataset", "{{ params.dataset }}", f"run.id={{{{ {run_id} }}}}", *extra))
    return BashOperator(
        task_id=stage.name,
        bash_command=f"{launcher} {job} {options}{{% for o in params.overrides %}} '{{{{ o }}}}'{{% endfor %}}",
        cwd=str(PROJECT),
        execution_timeout=TIMEOUTS[stage.kind],
    )
