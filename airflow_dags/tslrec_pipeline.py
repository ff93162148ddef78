"""The whole TSLRec pipeline for one dataset and run: every stage of tslrec.pipeline.STAGES, in order.

Trigger it with params, e.g. {"dataset": "beauty", "run_id": "beauty-2026-11-22", "overrides": ["pregroup.k=32"]}.
"""

from tslrec.pipeline import STAGES
from tslrec.scheduling import default_args, params, stage_task

from airflow.sdk import DAG, chain

with DAG(
    dag_id="tslrec_pipeline",
    schedule=None,
    catchup=False,
    params=params(),
    default_args=default_args(),
    render_template_as_native_obj=True,
    max_active_runs=1,
    tags=["tslrec"],
    doc_md=__doc__,
) as dag:
    chain(*(stage_task(stage) for stage in STAGES))
