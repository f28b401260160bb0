"""Every DAG file imports cleanly; the sync DAG has the promised shape (schedule, one active run, pools)."""

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
    order = ["preflight", "extract", "transform", "plan", "load", "commit", "report"]
    assert set(order) | {"watcher"} == set(dag.task_dict)
    assert dag.task_dict["watcher"].trigger_rule == "one_failed"
    assert set(dag.task_dict["watcher"].upstream_task_ids) == set(order)
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.task_dict[upstream].downstream_task_ids
    assert dag.task_dict["extract"].pool == "dreamapply_api"
    assert dag.task_dict["load"].pool == "dynamics365_api"
    assert dag.task_dict["report"].trigger_rule == "all_done"
    assert all(t.retries >= 0 for t in dag.tasks)


def test_plugin_loader_is_kept_away_from_the_library() -> None:
    ignore = (DAGS.parent / "plugins" / ".airflowignore").read_text().split()
    assert "d365/" in ignore
