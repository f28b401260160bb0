"""Nightly housekeeping: the sync ledger against Dynamics 365 (leads deleted, deactivated or edited in the CRM),
and the retention of run folders.

``reconcile``: every lead the ledger holds as sent (or withdrawn) is looked up by id in chunks; drift is reported
in the log, in ``reconcile.json`` in this run's folder and in the DAG run note. "Edited" compares a hash of the
CRM's current values with the ledger's payload hash (no run files needed). With the setting
``reconcile.recreate_deleted: true`` the leads deleted in the CRM are marked for re-send (ledger ``failed``,
reason "deleted in CRM"): the next ``dreamapply_to_dynamics365`` run recreates them with the same lead id. When
more than ``reconcile.max_deleted_fraction`` of the leads read as deleted, nothing is marked and the task fails.
Nothing is written to Dynamics by this DAG. Details: ``d365.pipeline.reconcile``.

``retention``: run folders under ``D365_SYNC_RUN_ROOT`` lose their personal files ``retention.personal_days``
after the run started and are deleted after ``retention.report_days`` (``d365.pipeline.retention``). It runs
here, once a day, beside ``reconcile`` and independent of it: retention is counted in days, a daily sweep lists
every run folder once (an hourly one in the sync would list thousands of folders on S3 each hour and lengthen
every sync), and it needs neither Dynamics nor DreamApply, so an outage of either never postpones a deletion.

Environment: ``D365_RECONCILE_SCHEDULE`` (default ``@daily``), plus the sync's ``D365_SYNC_SETTINGS``,
``D365_SYNC_LEDGER_URL`` and ``D365_SYNC_RUN_ROOT``, and its timeouts ``D365_SYNC_TASK_TIMEOUT_MINUTES`` /
``D365_SYNC_DAGRUN_TIMEOUT_MINUTES`` (``d365.timeouts``). Pool: ``dynamics365_api`` (reconcile).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from d365.pipeline.runfiles import RECONCILE_REPORT
from d365.timeouts import dagrun_timeout, task_timeout

DAG_ID = "reconcile_dreamapply_leads"
DYNAMICS_POOL = "dynamics365_api"
REPORT = RECONCILE_REPORT  # run files: d365.pipeline.runfiles


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("D365_RECONCILE_SCHEDULE", "@daily"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dagrun_timeout(),  # D365_SYNC_DAGRUN_TIMEOUT_MINUTES (d365.timeouts)
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": task_timeout()},
    tags=["dreamapply", "dynamics365", "crm", "reconciliation"],
    doc_md=__doc__,
)
def reconcile_dreamapply_leads() -> None:
    @task(pool=DYNAMICS_POOL)
    def reconcile() -> dict[str, Any]:
        from d365.tasks.reconcile import reconcile_step

        return reconcile_step(DAG_ID, get_current_context()["dag_run"].run_id)

    @task
    def retention() -> dict[str, Any]:
        from d365.tasks.reconcile import retention_step

        return retention_step(DAG_ID, get_current_context()["dag_run"].run_id)

    reconcile()
    retention()


reconcile_dreamapply_leads()
