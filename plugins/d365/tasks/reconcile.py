"""The nightly ``reconcile_dreamapply_leads`` DAG's two tasks, as thin functions over the pipeline.

``reconcile_step``: the ledger against Dynamics 365 (``d365.pipeline.reconcile``): drift in the log, in
``reconcile.json`` in this run's folder and in the DAG run note; a refusal (more than
``reconcile.max_deleted_fraction`` read as deleted) fails the task without retries, so a person looks first.
``retention_step``: run folders past ``retention.*`` lose their personal files, then go whole
(``d365.pipeline.retention``); what was deleted goes to ``retention.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import Ledger, default_ledger_url
from d365.pipeline.runfiles import RECONCILE_REPORT, RETENTION_REPORT
from d365.pipeline.settings import Settings, load_settings
from d365.runtime.runfolder import RunFolder, default_run_root, storage_path
from d365.tasks.context import dreamapply_instance

log = logging.getLogger(__name__)


def reconcile_step(
    dag_id: str, run_id: str, *, settings: Settings | None = None, ledger_url: str | None = None
) -> dict[str, Any]:
    """Compare every lead the ledger holds as sent with Dynamics; returns the drift counts."""
    from d365.hooks.dreamapply import DreamApplyHook
    from d365.hooks.dynamics import DynamicsHook
    from d365.pipeline.privacy import allowed_columns
    from d365.pipeline.reconcile import column_kinds, reconcile, summary_text
    from d365.pipeline.target import LeadTarget
    from d365.runtime.run_note import set_run_note

    s = settings or load_settings()
    instance = dreamapply_instance(DreamApplyHook(s.dreamapply.connection_id))
    dyn = DynamicsHook(s.dynamics.connection_id)
    meta = dyn.get_entity_metadata(s.dynamics.entity)
    target = LeadTarget.from_metadata(s.dynamics.connection_id, meta)  # resolved as the sync's preflight does
    ledger = Ledger(ledger_url or default_ledger_url())
    try:
        report = reconcile(
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
    report["report"] = RunFolder.for_run(dag_id, run_id).write_json(RECONCILE_REPORT, report)
    text = summary_text(report)
    for line in text.splitlines():
        log.info(line)
    print(text, flush=True)
    set_run_note(dag_id, run_id, text)
    if report["refused"]:  # fail now, no retries: a person must look at the CRM first
        raise AirflowFailException(f"reconciliation refused: {report['refused']}")
    return report["counts"]


def retention_step(dag_id: str, run_id: str, *, settings: Settings | None = None) -> dict[str, int]:
    """Apply the retention settings to every run folder under ``D365_SYNC_RUN_ROOT``; returns the counts."""
    from d365.pipeline.retention import apply_retention

    keep = (settings or load_settings()).retention
    result = apply_retention(
        storage_path(default_run_root()), personal_days=keep.personal_days, report_days=keep.report_days
    ).to_json()
    RunFolder.for_run(dag_id, run_id).write_json(RETENTION_REPORT, result)
    return {k: v for k, v in result.items() if isinstance(v, int)}
