"""Every DAG file imports cleanly; the sync DAG and its dry-run DAG have the promised shape (schedule, one active
run, pools)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def bag():  # type: ignore[no-untyped-def]
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(bag) -> None:  # type: ignore[no-untyped-def]
    assert bag.import_errors == {}


def test_sync_dag_shape(bag) -> None:  # type: ignore[no-untyped-def]
    dag = bag.dags.get("dreamapply_to_dynamics365")
    assert dag is not None
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert {"full_resync", "applicant_ids"} <= set(dag.params)
    order = ["preflight", "lock", "extract", "transform", "plan", "load", "commit", "report"]
    assert set(order) | {"watcher"} == set(dag.task_dict)
    assert dag.task_dict["watcher"].trigger_rule == "one_failed"
    assert set(dag.task_dict["watcher"].upstream_task_ids) == set(order)
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.task_dict[upstream].downstream_task_ids
    assert dag.task_dict["extract"].pool == "dreamapply_api"
    assert dag.task_dict["load"].pool == "dynamics365_api"
    assert dag.task_dict["report"].trigger_rule == "all_done"
    assert dag.task_dict["lock"].mode == "reschedule"  # waiting for another run's lock holds no worker slot
    assert dag.task_dict["load"].require_lock is True
    assert all(t.retries >= 0 for t in dag.tasks)


def test_dry_run_dag_shape(bag) -> None:  # type: ignore[no-untyped-def]
    """The dry run is its own unscheduled DAG: the sync's steps up to the plan, the report, and nothing that writes
    (unpausing it from the trigger dialog starts no schedule)."""
    dag = bag.dags.get("dreamapply_to_dynamics365_dry_run")
    assert dag is not None
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.max_active_runs == 1  # schedule=None
    order = ["preflight", "lock", "extract", "transform", "plan", "report"]
    assert set(order) | {"watcher"} == set(dag.task_dict)
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.task_dict[upstream].downstream_task_ids
    assert dag.task_dict["report"].trigger_rule == "all_done"
    assert set(dag.task_dict["watcher"].upstream_task_ids) == set(order)
    assert dag.task_dict["lock"].mode == "reschedule"
    assert "dry_run" not in dag.params and "dry_run" not in bag.dags["dreamapply_to_dynamics365"].params


def test_plugin_loader_is_kept_away_from_the_library() -> None:
    ignore = (DAGS.parent / "plugins" / ".airflowignore").read_text().split()
    assert "d365/" in ignore


def test_every_task_and_every_run_is_bounded_in_time(bag) -> None:  # type: ignore[no-untyped-def]
    """``execution_timeout`` on every task, ``dagrun_timeout`` on every DAG (defaults of d365.timeouts)."""
    from datetime import timedelta

    assert bag.dags, "no DAG parsed"
    for dag in bag.dags.values():
        assert dag.dagrun_timeout == timedelta(minutes=360), dag.dag_id
        for t in dag.tasks:
            assert t.execution_timeout == timedelta(minutes=180), f"{dag.dag_id}.{t.task_id}"


def test_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from airflow.models import DagBag

    monkeypatch.setenv("D365_SYNC_TASK_TIMEOUT_MINUTES", "7.5")
    monkeypatch.setenv("D365_SYNC_DAGRUN_TIMEOUT_MINUTES", "45")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        assert dag.dagrun_timeout == timedelta(minutes=45)
        assert {t.execution_timeout for t in dag.tasks} == {timedelta(minutes=7.5)}
    monkeypatch.setenv("D365_SYNC_TASK_TIMEOUT_MINUTES", "inf")
    broken = DagBag(dag_folder=str(DAGS))
    assert broken.import_errors and all("D365_SYNC_TASK_TIMEOUT_MINUTES" in e for e in broken.import_errors.values())
