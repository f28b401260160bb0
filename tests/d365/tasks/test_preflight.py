"""The preflight task (``d365.tasks.preflight``): configuration problems fail the run at once, unreachable services
let retries work."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from d365.errors import PreflightError, PreflightUnavailable
from d365.hooks.errors import DreamApplyAuthError, DynamicsAuthError, DynamicsError
from d365.tasks.preflight import _preflight_api_failure


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
