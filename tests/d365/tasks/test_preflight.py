"""The preflight task (``d365.tasks.preflight``): configuration problems fail the run at once, unreachable services
let retries work."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from d365.errors import PreflightError, PreflightUnavailable
from d365.hooks.errors import DreamApplyAuthError, DynamicsAuthError, DynamicsError
from d365.pipeline.runfiles import PREFLIGHT
from d365.pipeline.target import LeadTarget
from d365.tasks.context import RunContext
from d365.tasks.preflight import _preflight_api_failure, preflight
from sandbox.client import airflow_connections


def test_auth_failures_are_configuration_errors_that_skip_retries() -> None:
    for exc in (
        DynamicsAuthError("AADSTS7000215: Invalid client secret provided.", status=401, code="AADSTS7000215"),
        DreamApplyAuthError("invalid key", status=401),
    ):
        failure = _preflight_api_failure("connection", exc)
        assert isinstance(failure, PreflightError)
        assert isinstance(failure, AirflowFailException)
        assert str(exc) in str(failure)


def test_unreachable_services_are_retried_by_the_task() -> None:
    for exc in (
        DynamicsError("Service Unavailable", status=503),
        DynamicsError("connection reset", status=None, code="ConnectionError"),
    ):
        failure = _preflight_api_failure("connection", exc)
        assert isinstance(failure, PreflightUnavailable)
        assert not isinstance(failure, AirflowFailException)


# -- a failed lookup never turns into a create ------------------------------------------------------
def test_a_lying_answer_during_preflight_keeps_task_retries() -> None:
    from d365.hooks.errors import DynamicsMalformedAnswer

    failure = _preflight_api_failure("connection", DynamicsMalformedAnswer("an HTML page", status=200, code="HtmlPage"))
    assert isinstance(failure, PreflightUnavailable)


# -- the credential pool: every application user checked, the pool recorded for the load -----------------------
@pytest.fixture
def pooled(make_sandbox: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox with three application users; the default connection names the other two as its pool."""
    sb, client = make_sandbox(applicants=4, extra_app_users=2)
    for name, conn in airflow_connections(sb.info(), dynamics_pool=True).items():
        monkeypatch.setenv(name, json.dumps(conn))
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))
    return sb, client


def test_preflight_checks_every_pool_member_and_records_the_pool(
    pooled: Any, run_context: Callable[..., RunContext]
) -> None:
    sb, client = pooled
    since = client.last_seq()
    rc = run_context()
    out = preflight(rc)
    doc = rc.folder.read_json(PREFLIGHT)
    assert doc["target"]["pool"] == ["dynamics365_user2", "dynamics365_user3"] == out["target"]["pool"]
    assert LeadTarget.from_json(doc["target"]).connections == ("dynamics365_default", *doc["target"]["pool"])
    users = doc["application_users"]
    clients = [sb.info()["entra"]["client_id"], *(u["client_id"] for u in sb.info()["entra"]["extra_app_users"])]
    assert [u["client_id"] for u in users] == clients
    assert all(u["roles"] == ["DreamApply Integration"] for u in users) and len({u["user_id"] for u in users}) == 3
    log = [e for e in client.requests(server="dataverse", since=since) if e["user"] in clients]
    for client_id in clients:  # each user proved itself: WhoAmI, its systemuser row, its roles
        paths = {e["path"].rsplit("/", 1)[-1].split("(")[0] for e in log if e["user"] == client_id}
        assert {"WhoAmI", "systemusers", "systemuserroles_association"} <= paths
    assert doc["throttle"]["max_requests"] > 0  # the limits the dry run's estimate reads


def test_a_member_with_a_wrong_secret_fails_preflight_naming_it(
    pooled: Any, run_context: Callable[..., RunContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, client = pooled
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_USER2"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER2", json.dumps({**conn, "password": "wrong-secret-of-user-2"}))
    since = client.last_seq()
    rc = run_context()
    with pytest.raises(PreflightError) as info:
        preflight(rc)
    text = str(info.value)
    assert f"application user 'dynamics365_user2' (client {conn['login']}): AADSTS7000215 invalid client secret" in text
    assert "dynamics365_user3" not in text and "dynamics365_default" not in text  # only the one that fails
    assert "wrong-secret-of-user-2" not in text and conn["password"] not in text
    assert rc.folder.read_json(PREFLIGHT) is None  # nothing recorded, nothing asked of DreamApply
    assert client.requests(server="dreamapply", since=since) == []


def test_a_member_of_another_organization_fails_preflight_naming_it(
    pooled: Any, run_context: Callable[..., RunContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, _ = pooled
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_USER3"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_DYNAMICS365_USER3", json.dumps({**conn, "host": "https://other.crm4.dynamics.com"})
    )
    with pytest.raises(PreflightError, match=r"connection 'dynamics365_user3' \(client [0-9a-f-]+\) in the pool"):
        preflight(run_context())


def test_a_pool_naming_a_missing_connection_fails_preflight_naming_it(
    pooled: Any, run_context: Callable[..., RunContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DYNAMICS365_USER3")
    with pytest.raises(PreflightError, match=r"the credential pool of 'dynamics365_default': .*dynamics365_user3"):
        preflight(run_context())


@pytest.mark.parametrize("allowed", [True, False])
def test_preflight_records_the_bulk_messages_the_org_offers_unless_the_settings_say_no(
    pooled: Any, tmp_path: Path, allowed: bool
) -> None:
    """The docs' promise: ``dynamics.bulk_messages: false`` means always ``$batch`` (nothing recorded or asked)."""
    from d365.pipeline.settings import load_settings, parse_settings

    _, client = pooled
    data = load_settings().model_dump(exclude_unset=True)
    data.setdefault("dynamics", {})["bulk_messages"] = allowed
    rc = RunContext.create(
        "dreamapply_to_dynamics365",
        "manual__bulk",
        None,
        settings=parse_settings(data),
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    since = client.last_seq()
    preflight(rc)
    target = LeadTarget.from_json(rc.folder.read_json(PREFLIGHT)["target"])
    asked = [e for e in client.requests(server="dataverse", since=since) if e["path"].endswith("/sdkmessagefilters")]
    if allowed:
        assert target.bulk_messages == ("CreateMultiple", "UpdateMultiple", "UpsertMultiple") and asked
    else:
        assert target.bulk_messages == () and asked == []
