"""The load writes where preflight looked: the DAG hands the operator preflight's target, nothing defaults.

Unit tests, no network: the DAG's load task templates pull the connection id and the entity set from
preflight's XCom; the operator checks them against ``preflight.json`` and refuses to guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from d365.operators.load_leads import LoadLeadsOperator, PlanRefused
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import CREATE, Operation, final_requests
from d365.pipeline.target import LeadTarget, TargetMissing
from d365.runtime.runfolder import RunFolder

DAGS = Path(__file__).resolve().parents[3] / "dags"
TARGET = LeadTarget("crm_test", "lead", "uni_leads", "leadid")


class FakeTI:
    """Answers ``xcom_pull(task_ids='preflight')`` with what the preflight task returns."""

    def __init__(self, preflight: dict[str, Any]) -> None:
        self.preflight = preflight

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        assert (task_ids, key) == ("preflight", "return_value")
        return self.preflight


class NoHook(LoadLeadsOperator):
    """Counts hook constructions: a refused target must stop the load before any hook (or request) exists."""

    hooks = 0

    def get_hook(self) -> Any:
        type(self).hooks += 1
        raise AssertionError("no hook may be built")


def run_folder(tmp_path: Path, target: dict[str, Any] | None, planned_for: str = "uni_leads") -> str:
    """A run folder whose plan holds one create addressed to ``planned_for``."""
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    op = Operation(1, CREATE, "0f117b19-61b6-4f98-a524-eb8943a29a03", "h", {"lastname": "X"})
    (op,) = final_requests([op], entity_set=planned_for, owners=OwnerIds("OWNER"), owner_rules={})
    (folder / "plan" / "operations.jsonl").write_text(json.dumps(op.to_json()) + "\n")
    doc: dict[str, Any] = {"instance": "i"}
    if target is not None:
        doc["target"] = target
    (folder / "preflight.json").write_text(json.dumps(doc))
    return "file://" + str(folder)


def test_the_dag_passes_preflights_target_to_the_load() -> None:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    load = bag.dags["dreamapply_to_dynamics365"].task_dict["load"]
    assert {"dynamics365_conn_id", "entity_set"} <= set(load.template_fields)
    returned = {"run_folder": "file:///runs/r1", "instance": "uni.example", "target": TARGET.to_json()}
    context = {"ti": FakeTI(returned)}
    rendered = {name: load.render_template(getattr(load, name), context) for name in load.template_fields}
    assert rendered["dynamics365_conn_id"] == "crm_test"
    assert rendered["entity_set"] == "uni_leads"
    assert rendered["run_folder"] == "file:///runs/r1" and rendered["instance"] == "uni.example"


def test_the_operator_takes_the_target_from_preflight_json(tmp_path: Path) -> None:
    op = LoadLeadsOperator(task_id="load", run_folder=run_folder(tmp_path, TARGET.to_json()), instance="i")
    op._resolve_target(RunFolder(op.run_folder))
    assert (op.dynamics365_conn_id, op.entity_set) == ("crm_test", "uni_leads")


def test_a_plan_addressed_to_another_entity_set_is_refused_before_any_hook(tmp_path: Path) -> None:
    """The plan's URLs must address the entity set the load resolved (preflight's): else nothing is sent."""
    NoHook.hooks = 0
    folder = run_folder(tmp_path, TARGET.to_json(), planned_for="leads")
    op = NoHook(task_id="load", run_folder=folder, instance="i", ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
    with pytest.raises(
        PlanRefused, match=r"applicant 1 \(create\): the plan addresses no lead in entity set 'uni_leads'"
    ):
        op.execute({"run_id": "r1"})  # type: ignore[arg-type]
    assert NoHook.hooks == 0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"dynamics365_conn_id": "dynamics365_default"},
            "connection 'dynamics365_default' but preflight used 'crm_test'",
        ),
        ({"entity_set": "leads"}, "entity set 'leads' but preflight used 'uni_leads'"),
    ],
)
def test_a_target_other_than_preflights_is_refused_before_any_hook(
    tmp_path: Path, given: dict[str, str], message: str
) -> None:
    NoHook.hooks = 0
    op = NoHook(task_id="load", run_folder=run_folder(tmp_path, TARGET.to_json()), instance="i", **given)
    with pytest.raises(AirflowFailException, match=message):
        op.execute({"run_id": "r1"})  # type: ignore[arg-type]
    assert NoHook.hooks == 0


@pytest.mark.parametrize(
    "target",
    [
        None,
        {"connection_id": "crm_test", "entity": "lead", "primary_id": "leadid"},
        {**TARGET.to_json(), "entity_set": ""},
    ],
)
def test_no_target_no_load(tmp_path: Path, target: dict[str, Any] | None) -> None:
    """No recorded target and none given, or an incomplete one: the load fails, it never uses a default."""
    NoHook.hooks = 0
    op = NoHook(task_id="load", run_folder=run_folder(tmp_path, target), instance="i")
    with pytest.raises(AirflowFailException, match="load: no Dynamics 365"):
        op.execute({"run_id": "r1"})  # type: ignore[arg-type]
    assert NoHook.hooks == 0


def test_an_explicit_target_without_a_preflight_record_is_used(tmp_path: Path) -> None:
    op = LoadLeadsOperator(
        task_id="load",
        run_folder=run_folder(tmp_path, None),
        instance="i",
        dynamics365_conn_id="crm_test",
        entity_set="uni_leads",
    )
    op._resolve_target(RunFolder(op.run_folder))
    assert (op.dynamics365_conn_id, op.entity_set) == ("crm_test", "uni_leads")


def test_lead_target_json_names_what_is_missing() -> None:
    with pytest.raises(TargetMissing, match="missing entity_set, primary_id"):
        LeadTarget.from_json({"connection_id": "crm_test", "entity": "lead", "entity_set": None})
    with pytest.raises(TargetMissing, match="missing connection_id, entity, entity_set, primary_id"):
        LeadTarget.from_json(None)
