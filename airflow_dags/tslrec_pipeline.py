"""The whole TSLRec pipeline for one dataset and run: every stage of tslrec.pipeline.STAGES, in order.

Trigger it with params, e.g. {"dataset": "beauty", "run_id": "beauty-2026-11-22", "overrides": ["pregroup.k=32"]}.
"""

from tslrec.pipeline import STAGES
from tslrec.scheduling import stage_task, tslrec_dag

from airflow.sdk import chain

with tslrec_dag("tslrec_pipeline", schedule=None, doc=__doc__) as dag:
    chain(*(stage_task(stage) for stage in STAGES))
