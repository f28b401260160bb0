"""The preflight task stops a misconfigured sync before any extract or write, and says what is wrong.

Messages come from the task itself (``d365.tasks.preflight`` run directly against a private sandbox); one
whole-DAG run shows the run failing at preflight with DreamApply never asked and no lead written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from d365.errors import PreflightError
from d365.pipeline.settings import REPO_SETTINGS, load_settings
from d365.tasks.context import RunContext
from d365.tasks.preflight import preflight

DAG_ID = "dreamapply_to_dynamics365"


def settings_file(tmp_path: Path, change: Any = None) -> Path:
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    if change is not None:
        change(data)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def preflight_failure(env: Any, path: Path, tmp_path: Path) -> str:
    """Run the preflight step; return its error message after checking nothing reached DreamApply or the leads."""
    rc = RunContext.create(
        DAG_ID,
        "manual__preflight",
        run_folder="file://" + str(tmp_path / "run"),
        settings=load_settings(path),
        ledger_url=env.ledger_url,
    )
    with pytest.raises(PreflightError) as info:
        preflight(rc)
    assert env.leads() == []
    assert rc.folder.read_json("preflight.json") is None  # nothing for later steps to go on
    return str(info.value)


def dreamapply_requests(env: Any) -> list[dict[str, Any]]:
    return env.client.requests(server="dreamapply")


def test_a_wrong_client_secret_names_the_aadsts_code_and_never_the_secret(
    sync_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = sync_env(applicants=5)
    conn = json.loads(os.environ["AIRFLOW_CONN_DYNAMICS365_DEFAULT"])
    real_secret = conn["password"]
    wrong = "wrong-" + real_secret[::-1]
    conn["password"] = wrong
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    message = preflight_failure(env, settings_file(tmp_path), tmp_path)
    assert "AADSTS7000215" in message and "preflight failed: Dynamics 365 connection" in message
    assert wrong not in message and real_secret not in message
    assert dreamapply_requests(env) == []


def test_schema_drift_names_the_missing_attribute_before_dreamapply_is_asked(sync_env: Any, tmp_path: Path) -> None:
    env = sync_env(applicants=5)

    def drift(data: dict[str, Any]) -> None:
        data["data_mapping"]["uni_doesnotexist"] = "applicant.reference"

    message = preflight_failure(env, settings_file(tmp_path, drift), tmp_path)
    assert "data_mapping.uni_doesnotexist: the lead table has no attribute 'uni_doesnotexist'" in message
    assert dreamapply_requests(env) == []


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (
            {"email": "nobody@university.example"},
            "contact_owner: no Dynamics user with email 'nobody@university.example'",
        ),
        (
            {"email": "frank.meyer@university.example"},
            "contact_owner: the Dynamics user with email 'frank.meyer@university.example' is disabled",
        ),
    ],
    ids=["unknown", "disabled"],
)
def test_an_unknown_or_disabled_contact_owner_is_named(
    sync_env: Any, tmp_path: Path, owner: dict[str, str], expected: str
) -> None:
    env = sync_env(applicants=5)

    def set_owner(data: dict[str, Any]) -> None:
        data["contact_owner"] = owner

    message = preflight_failure(env, settings_file(tmp_path, set_owner), tmp_path)
    assert expected in message
    assert dreamapply_requests(env) == []


def test_the_application_user_and_a_bad_rule_owner_are_refused(sync_env: Any, tmp_path: Path) -> None:
    env = sync_env(applicants=5)
    client_id = env.sandbox.info()["entra"]["client_id"]

    def owners(data: dict[str, Any]) -> None:
        data["contact_owner"] = {"domainname": f"{client_id}@university.example"}
        data["owner_rules"] = [
            {"when": {"citizenship": ["FI"]}, "owner": {"email": "eva.lindqvist@university.example"}},
            {"when": {"citizenship": ["SE"]}, "owner": {"email": "frank.meyer@university.example"}},
        ]

    message = preflight_failure(env, settings_file(tmp_path, owners), tmp_path)
    assert "contact_owner: the Dynamics user with domainname" in message
    assert "is the application user this sync signs in as" in message
    assert "owner_rules[1].owner: the Dynamics user with email 'frank.meyer@university.example' is disabled" in message
    assert "owner_rules[0]" not in message


def test_a_wrong_dreamapply_key_fails_with_401(sync_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = sync_env(applicants=5)
    conn = json.loads(os.environ["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"])
    conn["password"] = "not-the-key"
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))
    message = preflight_failure(env, settings_file(tmp_path), tmp_path)
    assert "preflight failed: DreamApply connection 'dreamapply_default'" in message
    assert "401" in message and "not-the-key" not in message


def test_the_dag_run_fails_at_preflight_before_any_extract(sync_env: Any, tmp_path: Path) -> None:
    def drift(data: dict[str, Any]) -> None:
        data["data_mapping"]["uni_doesnotexist"] = "applicant.reference"

    env = sync_env(settings=settings_file(tmp_path, drift), applicants=5)
    run = env.run()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["preflight"] == "failed"
    assert states["extract"] == "upstream_failed" and states["load"] == "upstream_failed"
    assert dreamapply_requests(env) == []
    assert env.leads() == []
