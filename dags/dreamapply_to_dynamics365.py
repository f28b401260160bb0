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

Params: ``full_resync`` (re-send everyone), ``applicant_ids`` (send just these, e.g. [123, 456]),
``tracker_codes`` / ``academic_term_ids`` (send everyone with these trackers / in these terms), ``dry_run``
(print the plan: counts per action, creates per owner, picklist options that would be added; load and
commit are skipped, nothing is written).
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
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, PokeReturnValue, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from d365.operators.load_leads import LoadLeadsOperator
from d365.pipeline.lock import poke_seconds, release_on_run_failure, wait_seconds
from d365.runtime.alerts import FailureAlert
from d365.timeouts import dagrun_timeout, task_timeout
from d365.tuning import load_tuning

DAG_ID = "dreamapply_to_dynamics365"
DREAMAPPLY_POOL = "dreamapply_api"
DYNAMICS_POOL = "dynamics365_api"


def _run_context() -> Any:
    from d365.tasks.context import RunContext

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    ti = ctx["ti"]
    run_folder = ti.xcom_pull(task_ids="preflight", key="return_value")
    return RunContext.create(
        DAG_ID,
        dag_run.run_id,
        ctx["params"],
        run_folder=run_folder["run_folder"] if run_folder else None,
        require_lock=True,  # every step after ``lock`` holds the instance's sync lock
    )


@dag(
    dag_id=DAG_ID,
    schedule=os.environ.get("D365_SYNC_SCHEDULE", "@hourly"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dagrun_timeout(),  # D365_SYNC_DAGRUN_TIMEOUT_MINUTES (d365.timeouts)
    on_failure_callback=release_on_run_failure,  # a run killed by dagrun_timeout frees its sync lock at once
    default_args={
        "execution_timeout": task_timeout(),  # every task: D365_SYNC_TASK_TIMEOUT_MINUTES
        "retries": int(os.environ.get("D365_SYNC_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("D365_SYNC_RETRY_DELAY_SECONDS", "120"))),
        "retry_exponential_backoff": 2.0,
        "on_failure_callback": FailureAlert(),  # mail to settings.technical_contact (d365.runtime.alerts)
    },
    params={
        "full_resync": Param(False, type="boolean", description="Re-send every applicant (cursors restart)."),
        "applicant_ids": Param(
            [],
            type="array",
            items={"type": "integer"},
            description="Send only these DreamApply applicant IDs (a manual send); cursors do not move.",
        ),
        "tracker_codes": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Manual send: every applicant with one of these tracker codes; cursors do not move.",
        ),
        "academic_term_ids": Param(
            [],
            type="array",
            items={"type": "integer"},
            description="Manual send: every applicant with an application in these academic terms.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Plan and print what would be written (creates, updates, owners, picklist options); "
            "writes nothing: load and commit are skipped.",
        ),
    },
    tags=["dreamapply", "dynamics365", "crm"],
    doc_md=__doc__,
)
def dreamapply_to_dynamics365() -> None:
    @task(pool=DYNAMICS_POOL)
    def preflight() -> dict[str, Any]:
        from d365.tasks.context import RunContext, timed
        from d365.tasks.preflight import preflight as run

        ctx = get_current_context()
        return timed(RunContext.create(DAG_ID, ctx["dag_run"].run_id, ctx["params"]), "preflight", run)

    @task.sensor(mode="reschedule", poke_interval=poke_seconds(), timeout=wait_seconds() + 2 * poke_seconds())
    def lock() -> PokeReturnValue:
        """One sync at a time per DreamApply instance: wait while another run holds the lock (d365.pipeline.lock)."""
        from d365.tasks.lock import lock_step

        timeout = get_current_context()["dag"].dagrun_timeout
        doc = lock_step(_run_context(), dagrun_timeout=timeout.total_seconds() if timeout else None)
        return PokeReturnValue(is_done=doc is not None, xcom_value=doc)

    @task(pool=DREAMAPPLY_POOL)
    def extract() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.extract import extract_step

        return timed(_run_context(), "extract", extract_step)

    @task
    def transform() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.transform import transform_step

        return timed(_run_context(), "transform", transform_step)

    @task(pool=DYNAMICS_POOL)
    def plan() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.plan import plan_step

        return timed(_run_context(), "plan", plan_step)

    def skip_in_dry_run(context: Any) -> None:
        if context["params"].get("dry_run"):
            raise AirflowSkipException("dry run: nothing is written (commit is skipped too)")

    load = LoadLeadsOperator(
        task_id="load",
        pre_execute=skip_in_dry_run,
        pool=DYNAMICS_POOL,
        run_folder="{{ ti.xcom_pull(task_ids='preflight')['run_folder'] }}",
        instance="{{ ti.xcom_pull(task_ids='preflight')['instance'] }}",
        # the target preflight resolved (d365.pipeline.target): the load writes where preflight looked
        dynamics365_conn_id="{{ ti.xcom_pull(task_ids='preflight')['target']['connection_id'] }}",
        entity_set="{{ ti.xcom_pull(task_ids='preflight')['target']['entity_set'] }}",
        batch_size=load_tuning().batch_size,
        max_workers=load_tuning().max_workers,
        require_lock=True,
    )

    @task
    def commit() -> dict[str, Any]:
        from d365.tasks.commit import commit_step
        from d365.tasks.context import timed

        return timed(_run_context(), "commit", commit_step)

    @task(trigger_rule="all_done")
    def report() -> dict[str, Any]:
        from d365.tasks.context import release_lock, timed
        from d365.tasks.report import report_step

        rc = _run_context()
        try:
            return timed(rc, "report", report_step)
        finally:
            release_lock(rc)  # dry runs and failed runs end here (a committed run released it already)

    @task(trigger_rule="one_failed", retries=0)
    def watcher() -> None:
        """Fails the run when any task failed: ``report`` (all_done) must not turn a failed load green."""
        from d365.pipeline.ledger import default_ledger_url
        from d365.pipeline.lock import release

        release(default_ledger_url(), None, get_current_context()["dag_run"].run_id)  # in case the report could not
        raise RuntimeError("a task of this run failed; see the report task's summary and the failed task's log")

    steps = [preflight(), lock(), extract(), transform(), plan(), load, commit(), report()]
    chain(*steps)
    steps >> watcher()


dreamapply_to_dynamics365()
