"""What the sync DAG and its dry-run DAG share: the trigger form's params and the task wiring.

The task bodies live in ``d365.tasks``; this module only builds the Airflow tasks over them, so that
``dags/dreamapply_to_dynamics365.py`` and ``dags/dreamapply_to_dynamics365_dry_run.py`` stay thin and cannot
drift apart (the dry run is the sync's own steps up to the plan, plus the report).

Params: every one is optional in the trigger form. Airflow 3.3's form marks a param "required" (red asterisk,
"This field is required" once cleared) unless its JSON-schema ``type`` admits ``null``, so each type lists
``"null"``; a cleared field (``null``) means the same as an empty list / false (``RunContext``).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, PokeReturnValue, chain, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from d365.operators.load_leads import LoadLeadsOperator
from d365.pipeline.lock import poke_seconds, wait_seconds
from d365.runtime.alerts import FailureAlert
from d365.timeouts import task_timeout
from d365.tuning import load_tuning

log = logging.getLogger(__name__)

DREAMAPPLY_POOL = "dreamapply_api"
DYNAMICS_POOL = "dynamics365_api"
MAX_IDS = 1000  # a manual send is for a handful of applicants; a bigger set is a full resync's job
DRY_RUN_DAG_ID = "dreamapply_to_dynamics365_dry_run"


def _id_list(title: str, description: str) -> Param:
    return Param(
        [],
        type=["null", "array"],
        items={"type": "integer", "minimum": 1},
        maxItems=MAX_IDS,
        title=title,
        description=description,
    )


def sync_params() -> dict[str, Param]:
    """The trigger form of both DAGs: optional, labelled, validated (IDs ≥ 1, at most ``MAX_IDS``)."""
    return {
        "full_resync": Param(
            False,
            type=["null", "boolean"],
            title="Full resync",
            description="Re-send every applicant, not only the new and changed ones (the cursors restart).",
        ),
        "applicant_ids": _id_list(
            "Applicant IDs",
            f"Send only these DreamApply applicant IDs, as a JSON list, e.g. [123, 456] (whole numbers from 1, "
            f"at most {MAX_IDS}). Leave empty for the usual run; a manual send does not move the cursors.",
        ),
        "tracker_codes": Param(
            [],
            type=["null", "array"],
            items={"type": "string"},
            maxItems=MAX_IDS,
            title="Tracker codes",
            description="Send every applicant with one of these DreamApply tracker codes (one per line). "
            "Leave empty for the usual run; a manual send does not move the cursors.",
        ),
        "academic_term_ids": _id_list(
            "Academic term IDs",
            "Send every applicant with an application in these DreamApply academic terms, as a JSON list, "
            "e.g. [7]. Leave empty for the usual run; a manual send does not move the cursors.",
        ),
    }


def sync_default_args() -> dict[str, Any]:
    """Timeouts, retries and the failure mail of every task of both DAGs."""
    return {
        "execution_timeout": task_timeout(),  # every task: D365_SYNC_TASK_TIMEOUT_MINUTES
        "retries": int(os.environ.get("D365_SYNC_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("D365_SYNC_RETRY_DELAY_SECONDS", "120"))),
        "retry_exponential_backoff": 2.0,
        "on_failure_callback": FailureAlert(),  # mail to settings.technical_contact (d365.runtime.alerts)
    }


def _run_params(dry_run: bool) -> dict[str, Any]:
    """This run's params; the dry-run DAG forces ``dry_run`` whatever the conf says."""
    params = dict(get_current_context()["params"])
    if dry_run:
        params["dry_run"] = True
    return params


def _run_context(dag_id: str, dry_run: bool) -> Any:
    from d365.tasks.context import RunContext

    ctx = get_current_context()
    pre = ctx["ti"].xcom_pull(task_ids="preflight", key="return_value")
    return RunContext.create(
        dag_id,
        ctx["dag_run"].run_id,
        _run_params(dry_run),
        run_folder=pre["run_folder"] if pre else None,
        require_lock=True,  # every step after ``lock`` holds the instance's sync lock
    )


def skip_in_dry_run(context: Any) -> None:
    """The sync DAG's load when a run's conf still asks for ``dry_run`` (CLI/API): write nothing, say so."""
    if context["params"].get("dry_run"):
        message = "dry run (conf dry_run=true): nothing is written; load and commit are skipped"
        log.info(message)
        raise AirflowSkipException(message)


def build_sync(dag_id: str, *, dry_run: bool) -> None:
    """The tasks, inside a ``@dag`` function: preflight → lock → extract → transform → plan → [load → commit]
    → report, and the watcher. ``dry_run``: no load and no commit; every step runs as a dry run."""

    @task(pool=DYNAMICS_POOL)
    def preflight() -> dict[str, Any]:
        from d365.tasks.context import RunContext, timed
        from d365.tasks.preflight import preflight as run

        rc = RunContext.create(dag_id, get_current_context()["dag_run"].run_id, _run_params(dry_run))
        return timed(rc, "preflight", run)

    @task.sensor(mode="reschedule", poke_interval=poke_seconds(), timeout=wait_seconds() + 2 * poke_seconds())
    def lock() -> PokeReturnValue:
        """One sync at a time per DreamApply instance: wait while another run holds the lock (d365.pipeline.lock)."""
        from d365.tasks.lock import lock_step

        timeout = get_current_context()["dag"].dagrun_timeout
        doc = lock_step(_run_context(dag_id, dry_run), dagrun_timeout=timeout.total_seconds() if timeout else None)
        return PokeReturnValue(is_done=doc is not None, xcom_value=doc)

    @task(pool=DREAMAPPLY_POOL)
    def extract() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.extract import extract_step

        return timed(_run_context(dag_id, dry_run), "extract", extract_step)

    @task
    def transform() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.transform import transform_step

        return timed(_run_context(dag_id, dry_run), "transform", transform_step)

    @task(pool=DYNAMICS_POOL)
    def plan() -> dict[str, Any]:
        from d365.tasks.context import timed
        from d365.tasks.plan import plan_step

        return timed(_run_context(dag_id, dry_run), "plan", plan_step)

    @task
    def commit() -> dict[str, Any]:
        from d365.tasks.commit import commit_step
        from d365.tasks.context import timed

        return timed(_run_context(dag_id, dry_run), "commit", commit_step)

    @task(trigger_rule="all_done")
    def report() -> dict[str, Any]:
        from d365.tasks.context import release_lock, timed
        from d365.tasks.report import report_step

        rc = _run_context(dag_id, dry_run)
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

    steps: list[Any] = [preflight(), lock(), extract(), transform(), plan()]
    if not dry_run:
        steps.append(
            LoadLeadsOperator(
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
        )
        steps.append(commit())
    steps.append(report())
    chain(*steps)
    steps >> watcher()
