"""Dry run of the DreamApply → Dynamics 365 sync: what the next sync would write, with nothing written.

preflight → lock → extract → transform → plan → report (the sync's own steps, ``d365.sync_dag``; no load,
no commit). The plan's summary (counts per action, creates per owner, picklist options that would be added,
an estimate of the load time) is in the plan and report logs, ``plan/dry_run.json`` and the run note.

Why a DAG of its own: the trigger dialog's "Unpause on trigger" box is ticked by default, and triggering a
paused ``dreamapply_to_dynamics365`` for a dry run would unpause it, so its hourly sync would start writing.
This DAG has no schedule: unpausing it starts nothing, and no param can turn it into a real send.

Like every sync run it takes the instance's sync lock (it waits while a sync runs, and a sync waits for it),
reads the ledger and DreamApply, and writes only its run folder: no picklist option, no lead, no cursor, no
ledger row. Params: the sync's (``full_resync``, ``applicant_ids``, ``tracker_codes``, ``academic_term_ids``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from d365.pipeline.lock import release_on_run_failure
from d365.sync_dag import DRY_RUN_DAG_ID, build_sync, sync_default_args, sync_params
from d365.timeouts import dagrun_timeout

DAG_ID = DRY_RUN_DAG_ID


@dag(
    dag_id=DAG_ID,
    schedule=None,  # triggered by hand only: unpausing it starts nothing
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dagrun_timeout(),
    on_failure_callback=release_on_run_failure,
    default_args=sync_default_args(),
    params=sync_params(),
    tags=["dreamapply", "dynamics365", "crm", "dry-run"],
    doc_md=__doc__,
)
def dreamapply_to_dynamics365_dry_run() -> None:
    build_sync(DAG_ID, dry_run=True)


dreamapply_to_dynamics365_dry_run()
