"""Preflight failures: configuration problems fail the run at once, unreachable services let retries work."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from d365.hooks.errors import DreamApplyAuthError, DynamicsAuthError, DynamicsError
from d365.steps import PreflightError, PreflightUnavailable, _preflight_api_failure


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


def test_lead_lookup_fails_on_a_lying_answer_instead_of_finding_nothing(make_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    import pytest

    from d365.hooks.dynamics import DynamicsHook
    from d365.hooks.errors import DynamicsMalformedAnswer
    from d365.pipeline.plan import LeadPayload
    from d365.pipeline.settings import load_settings
    from d365.steps import _lookup_existing
    from sandbox.client import airflow_connections

    sb, client = make_sandbox(applicants=5)
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    [lead_id] = client.post(
        "/dataverse/leads", [{"lastname": "Fair", "emailaddress1": "met@example.org", "subject": "x"}]
    )["ids"]
    unknown = [LeadPayload(4242, {"lastname": "Met"}, "h", "met@example.org")]
    s = load_settings()
    dyn = DynamicsHook(max_retries=1)
    dyn.backoff_base = 0.01
    by_key: dict = {}
    by_email: dict = {}
    assert _lookup_existing(dyn, "leads", "leadid", s, unknown, by_key, by_email) == 2  # by key, then by e-mail
    assert [e.lead_id for e in by_email["met@example.org"]] == [lead_id]

    for kind in ("html", "json_error", "empty", "cut"):
        client.add_fault(kind=kind, server="dataverse", method="GET", path="^/api/data/v9.2/leads$", nth=2, times=99)
        by_email = {}
        with pytest.raises(DynamicsMalformedAnswer) as caught:  # never "no existing lead" (which would create)
            _lookup_existing(dyn, "leads", "leadid", s, unknown, {}, by_email)
        assert caught.value.retryable and "met@example.org" not in str(caught.value)
        assert [r["fired"] for r in client.get("/faults")["rules"]] == [2]
        client.clear_faults()


def test_a_lookup_row_without_a_lead_id_is_an_error() -> None:
    """The sandbox always answers the selected primary id; a stand-in lookup shows the row check itself."""
    import pytest

    from d365.hooks.dynamics_query import ValueLookup
    from d365.hooks.errors import DynamicsMalformedAnswer
    from d365.pipeline.plan import LeadPayload
    from d365.pipeline.settings import load_settings
    from d365.steps import _lookup_existing

    class Rows:
        def __init__(self, rows: list[dict]) -> None:
            self.rows = rows

        def query_in(self, entity_set: str, column: str, values: list[str], **_: object) -> ValueLookup:
            return ValueLookup(self.rows, 1)

    unknown = [LeadPayload(7, {}, "h", "a@example.org")]
    for row in ({"emailaddress1": "a@example.org"}, {"leadid": "not-a-guid", "emailaddress1": "a@example.org"},
                {"leadid": "0f8fad5b-d9cb-469f-a165-70867728950e", "emailaddress1": 12}):  # fmt: skip
        with pytest.raises(DynamicsMalformedAnswer, match="lead lookup row"):
            _lookup_existing(Rows([row]), "leads", "leadid", load_settings(), unknown, {}, {})
