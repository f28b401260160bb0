"""DreamApply → Dynamics 365: new and changed applicants become leads, idempotently, every hour.

preflight → lock → extract → transform → plan → load → commit → report

- preflight: token, WhoAmI, the mapping against the live lead metadata, the contact owner and rule owners,
  the DreamApply key; a configuration error fails the run at once, before any extract or write.
- lock: one sync at a time per DreamApply instance (scheduled, manual, backfill, dry run): a lease in the
  ledger database; while another run holds it this sensor waits (reschedule mode, no worker slot) and fails
  naming the holder after ``D365_SYNC_LOCK_WAIT_SECONDS``. Every later step renews it; commit releases it
  (report and watcher too, for dry and failed runs); it expires after the DAG run timeout.
- extract: new applicants (ID cursor), changes (journal cursor), failed ones to retry; bulk endpoints.
- transform: Great Expectations validation (row quarantine; batch gates stop the run before any write),
  the consent gate and the mapping (include/mappings/settings.yaml) per applicant.
- plan: create / update / adopt-by-email / unchanged against the ledger; owners per rule; missing picklist
  options added (one publish per run); consent-withdrawal and erasure actions.
- load: ``$batch`` upserts by deterministic lead id (a re-run never duplicates a lead), parallel workers
  behind one shared throttle.
- commit: cursors advance only after the load succeeded; erased applicants scrubbed from ledger and run files.
- report: created / updated / unchanged / skipped for consent / quarantined / failed, in the log,
  ``report.json`` in the run folder and the DAG run note (runs even when the load failed).
- watcher: fails the DAG run when any task failed (so ``report`` running anyway cannot hide it).

Params (all optional, ``d365.sync_dag.sync_params``): ``full_resync`` (re-send everyone), ``applicant_ids``
(send just these, e.g. [123, 456]), ``tracker_codes`` / ``academic_term_ids`` (send everyone with these
trackers / in these terms). Dry run: the separate DAG ``dreamapply_to_dynamics365_dry_run`` (no schedule, so
the trigger dialog's "Unpause on trigger" cannot start this DAG's hourly sync); a conf ``{"dry_run": true}``
given here through the CLI or API is still honoured (load and commit skipped, nothing written).
Environment: ``D365_SYNC_SCHEDULE`` (default ``@hourly``), ``D365_SYNC_SETTINGS``, ``D365_SYNC_LEDGER_URL``,
``D365_SYNC_RUN_ROOT``, ``D365_SYNC_BATCH_SIZE`` (operations per ``$batch``, default 100),
``D365_SYNC_MAX_WORKERS`` (parallel load workers, default 16, capped by x-ms-dop-hint),
``D365_SYNC_TASK_RETRIES`` / ``D365_SYNC_RETRY_DELAY_SECONDS``, ``D365_SYNC_TASK_TIMEOUT_MINUTES`` (every
task's execution_timeout, default 180) / ``D365_SYNC_DAGRUN_TIMEOUT_MINUTES`` (default 360),
``D365_SYNC_LOCK_WAIT_SECONDS`` /
``D365_SYNC_LOCK_POKE_SECONDS`` / ``D365_SYNC_LOCK_TTL_SECONDS`` (the sync lock: ``d365.pipeline.lock``).
Pools: ``dreamapply_api`` (extract) and ``dynamics365_api`` (preflight, plan, load).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag

from d365.pipeline.lock import release_on_run_failure
from d365.sync_dag import build_sync, sync_default_args, sync_params
from d365.timeouts import dagrun_timeout

DAG_ID = "dreamapply_to_dynamics365"


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("D365_SYNC_SCHEDULE", "@hourly"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dagrun_timeout(),  # D365_SYNC_DAGRUN_TIMEOUT_MINUTES (d365.timeouts)
    on_failure_callback=release_on_run_failure,  # a run killed by dagrun_timeout frees its sync lock at once
    default_args=sync_default_args(),  # timeouts, retries, the failure mail (d365.sync_dag)
    params=sync_params(),
    tags=["dreamapply", "dynamics365", "crm"],
    doc_md=__doc__,
)
def dreamapply_to_dynamics365() -> None:
    build_sync(DAG_ID, dry_run=False)


dreamapply_to_dynamics365()
