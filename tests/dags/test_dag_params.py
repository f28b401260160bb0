"""The trigger form's params (both sync DAGs): optional in Airflow 3.3's form, labelled, and validated the way
the issue asks: a negative applicant ID is refused with a readable message, cleared fields (null) pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
SYNC_DAGS = ("dreamapply_to_dynamics365", "dreamapply_to_dynamics365_dry_run")


@pytest.fixture(scope="module")
def bag():  # type: ignore[no-untyped-def]
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


def required_in_form(schema: dict[str, Any]) -> bool:
    """Airflow 3.3's trigger form (ui/dist, ``flexibleForm``): a param with a ``type`` that does not admit
    ``null`` gets the red asterisk and "This field is required" once cleared."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def resolved(bag: Any, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """The params a run with ``conf`` gets (the merge and validation the API and the task runner do)."""
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict()
    params.update(bag.dags[dag_id].params)
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
def test_every_param_is_optional_and_labelled(bag: Any, dag_id: str) -> None:
    params = bag.dags[dag_id].params
    assert set(params) == {"full_resync", "applicant_ids", "tracker_codes", "academic_term_ids"}
    for name in params:
        param = params.get_param(name)
        assert not required_in_form(param.schema), name
        assert param.schema.get("title") and param.schema["title"] != name, name
        assert param.description, name
    for name in ("applicant_ids", "academic_term_ids"):
        schema = params.get_param(name).schema
        assert schema["items"] == {"type": "integer", "minimum": 1}
        assert 1 <= schema["maxItems"] <= 10_000


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"applicant_ids": [12, 345]},
        {"applicant_ids": None, "tracker_codes": None, "academic_term_ids": None, "full_resync": None},
        {"tracker_codes": []},  # a cleared tracker code
        {"tracker_codes": ["MBA-2025", "BSC"]},
        {"academic_term_ids": [7]},
        {"full_resync": True},
    ],
)
def test_good_values_pass(bag: Any, dag_id: str, conf: dict[str, Any]) -> None:
    assert resolved(bag, dag_id, conf) == {**resolved(bag, dag_id, {}), **conf}


@pytest.mark.parametrize(
    ("conf", "readable"),
    [
        ({"applicant_ids": [12, -3]}, "applicant_ids: -3 is less than the minimum of 1"),
        ({"applicant_ids": [0]}, "applicant_ids: 0 is less than the minimum of 1"),
        ({"academic_term_ids": [-1]}, "academic_term_ids: -1 is less than the minimum of 1"),
        ({"applicant_ids": ["abc"]}, "applicant_ids: 'abc' is not of type 'integer'"),
        ({"applicant_ids": list(range(1, 1002))}, "applicant_ids: [1, 2, 3"),
        ({"tracker_codes": "MBA"}, "tracker_codes: 'MBA' is not of type 'null', 'array'"),
    ],
)
def test_bad_values_are_refused_with_a_readable_message(bag: Any, conf: dict[str, Any], readable: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    for dag_id in SYNC_DAGS:
        with pytest.raises(ParamValidationError) as caught:
            resolved(bag, dag_id, conf)
        first_line = str(caught.value).splitlines()[0]
        assert first_line.startswith("Invalid input for param " + readable), first_line
        if len(conf.get("applicant_ids") or ()) > 1000:
            assert first_line.endswith("is too long"), first_line[-80:]


def test_cleared_fields_read_as_empty_in_the_task_bodies(tmp_path: Path) -> None:
    """``null`` from a cleared form field means what an empty list means: the usual (not manual) run."""
    from d365.tasks.context import RunContext

    cleared = {"applicant_ids": None, "tracker_codes": None, "academic_term_ids": None, "full_resync": None}
    rc = RunContext.create("d", "r", cleared, run_folder=str(tmp_path), settings=object(), ledger_url="sqlite://")
    assert rc.requested_ids == [] and rc.tracker_codes == [] and rc.academic_term_ids == []
    assert rc.full_resync is False and rc.dry_run is False
