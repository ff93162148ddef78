"""The periodic case: new interactions -> sequences -> incremental item inference -> retraining downstream.

It refreshes an existing run (the `run_id` param; empty: the dataset's name) whose model was trained by
tslrec_pipeline: ingest re-reads the logs (with the new interactions), sequences follow, the tuned LLM embeds only
the items it has not embedded yet, and the downstream recommenders are trained again on the new sequences.
"""

from tslrec.pipeline import STAGES
from tslrec.scheduling import stage_task, tslrec_dag

from airflow.sdk import chain

STEPS = {"ingest": (), "sequences": (), "infer": ("infer.mode=incremental",), "train": ("train.skip_finished=false",)}

with tslrec_dag("tslrec_refresh", schedule="@daily", doc=__doc__) as dag:
    chain(*(stage_task(stage, *STEPS[stage.name], run_id="(params.run_id or params.dataset)")
            for stage in STAGES if stage.name in STEPS))
