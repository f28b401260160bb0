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
from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.runfiles import RECONCILE_REPORT, RETENTION_REPORT
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
        import logging

        from d365.hooks.dreamapply import DreamApplyHook
        from d365.hooks.dynamics import DynamicsHook
        from d365.pipeline.identity import instance_key
        from d365.pipeline.ledger import Ledger, default_ledger_url
        from d365.pipeline.privacy import allowed_columns
        from d365.pipeline.reconcile import column_kinds, summary_text
        from d365.pipeline.reconcile import reconcile as run
        from d365.pipeline.settings import load_settings
        from d365.pipeline.target import LeadTarget
        from d365.runtime.run_note import set_run_note
        from d365.runtime.runfolder import RunFolder

        log = logging.getLogger(__name__)
        ctx = get_current_context()
        run_id = ctx["dag_run"].run_id
        s = load_settings()
        da = DreamApplyHook(s.dreamapply.connection_id)
        instance = instance_key(da.get_connection(da.dreamapply_conn_id).host or "")
        dyn = DynamicsHook(s.dynamics.connection_id)
        meta = dyn.get_entity_metadata(s.dynamics.entity)
        target = LeadTarget.from_metadata(s.dynamics.connection_id, meta)  # resolved as the sync's preflight does
        ledger = Ledger(default_ledger_url())
        try:
            report = run(
                ledger=ledger,
                instance=instance,
                dyn=dyn,
                entity_set=target.entity_set,
                primary_id=target.primary_id,
                columns=allowed_columns(s),
                kinds=column_kinds(meta.attributes),
                recreate_deleted=s.reconcile.recreate_deleted,
                max_deleted_fraction=s.reconcile.max_deleted_fraction,
                run_id=run_id,
            )
        finally:
            ledger.dispose()
        report["target"] = target.to_json()
        folder = RunFolder.for_run(DAG_ID, run_id)
        report["report"] = folder.write_json(REPORT, report)
        text = summary_text(report)
        for line in text.splitlines():
            log.info(line)
        print(text, flush=True)
        set_run_note(DAG_ID, run_id, text)
        if report["refused"]:  # fail now, no retries: a person must look at the CRM first
            raise AirflowFailException(f"reconciliation refused: {report['refused']}")
        return report["counts"]

    @task
    def retention() -> dict[str, Any]:
        from d365.pipeline.retention import apply_retention
        from d365.pipeline.settings import load_settings
        from d365.runtime.runfolder import RunFolder, default_run_root, storage_path

        ctx = get_current_context()
        keep = load_settings().retention
        result = apply_retention(
            storage_path(default_run_root()), personal_days=keep.personal_days, report_days=keep.report_days
        ).to_json()
        RunFolder.for_run(DAG_ID, ctx["dag_run"].run_id).write_json(RETENTION_REPORT, result)
        return {k: v for k, v in result.items() if isinstance(v, int)}

    reconcile()
    retention()


reconcile_dreamapply_leads()
