"""Nightly reconciliation: the sync ledger against Dynamics 365 (leads deleted, deactivated or edited in the CRM).

Every lead the ledger holds as sent (or withdrawn) is looked up by id in chunks; drift is reported in the log,
in ``reconcile.json`` in this run's folder and in the DAG run note. With the setting
``reconcile.recreate_deleted: true`` the leads deleted in the CRM are marked for re-send (ledger ``failed``,
reason "deleted in CRM"): the next ``dreamapply_to_dynamics365`` run recreates them with the same lead id.
Nothing is written to Dynamics by this DAG. Details: ``d365.pipeline.reconcile``.

Environment: ``D365_RECONCILE_SCHEDULE`` (default ``@daily``), plus the sync's ``D365_SYNC_SETTINGS``,
``D365_SYNC_LEDGER_URL`` and ``D365_SYNC_RUN_ROOT``. Pool: ``dynamics365_api``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

DAG_ID = "reconcile_dreamapply_leads"
SYNC_DAG_ID = "dreamapply_to_dynamics365"
DYNAMICS_POOL = "dynamics365_api"
REPORT = "reconcile.json"


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("D365_RECONCILE_SCHEDULE", "@daily"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
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
        from d365.pipeline.reconcile import reconcile as run
        from d365.pipeline.reconcile import summary_text
        from d365.pipeline.run_note import set_run_note
        from d365.pipeline.runfolder import RunFolder, default_run_root
        from d365.pipeline.settings import load_settings

        log = logging.getLogger(__name__)
        ctx = get_current_context()
        run_id = ctx["dag_run"].run_id
        s = load_settings()
        da = DreamApplyHook(s.dreamapply.connection_id)
        instance = instance_key(da.get_connection(da.dreamapply_conn_id).host or "")
        dyn = DynamicsHook(s.dynamics.connection_id)
        meta = dyn.get_entity_metadata(s.dynamics.entity)
        ledger = Ledger(default_ledger_url())
        try:
            report = run(
                ledger=ledger,
                instance=instance,
                dyn=dyn,
                entity_set=meta.entity_set_name,
                primary_id=meta.primary_id,
                run_root=default_run_root(),
                sync_dag_id=SYNC_DAG_ID,
                recreate_deleted=s.reconcile.recreate_deleted,
                run_id=run_id,
            )
        finally:
            ledger.dispose()
        folder = RunFolder.for_run(DAG_ID, run_id)
        report["report"] = folder.write_json(REPORT, report)
        text = summary_text(report)
        for line in text.splitlines():
            log.info(line)
        print(text, flush=True)
        set_run_note(DAG_ID, run_id, text)
        return report["counts"]

    reconcile()


reconcile_dreamapply_leads()
