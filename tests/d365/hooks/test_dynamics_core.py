"""The request core of the Dynamics hook (``d365.hooks.dynamics_core``): retries, backoff and throttling of real
requests, with faults injected in the sandbox."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.errors import DynamicsError, DynamicsThrottled
from sandbox.client import SandboxClient

Private = Callable[..., tuple[DynamicsHook, SandboxClient]]


def stored(client: SandboxClient, applicant_id: str) -> list[dict[str, Any]]:
    return client.get("/dataverse/leads", applicant_id=applicant_id)


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_429_waits_retry_after_then_succeeds(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", nth=1)
    assert hook.whoami()["UserId"]
    throttled, ok = client.requests(server="dataverse", since=seq)
    assert (throttled["status"], ok["status"]) == (429, 200)
    assert ok["started"] - throttled["finished"] >= 1.0
    assert hook.stats["throttled"] == 1 and hook.stats["retries"] == 1
    assert hook.stats["throttle_wait_seconds"] >= 1.0


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_429_pauses_other_threads(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", nth=1)
    first = threading.Thread(target=hook.whoami)
    first.start()
    while hook.stats["throttled"] < 1 and first.is_alive():
        threading.Event().wait(0.01)
    second = threading.Thread(target=hook.whoami)  # another worker, started during the Retry-After
    second.start()
    first.join()
    second.join()
    throttled, *rest = client.requests(server="dataverse", since=seq)
    assert throttled["status"] == 429 and [e["status"] for e in rest] == [200, 200]
    assert all(e["started"] - throttled["finished"] >= 1.0 for e in rest)


def programme_options(hook: DynamicsHook) -> dict[int, str]:
    return hook.get_entity_metadata("lead", strong=True).attributes["uni_programme"].options or {}


# InsertOptionValue (the plan adds a missing programme option with it) is the sync's non-idempotent POST: a second
# send would fail on the duplicate label, so the core must never resend it after it may have run.
@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_429_on_a_post_action_is_retried_because_nothing_ran(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", method="POST", nth=1)
    value = hook.insert_option_value("lead", "uni_programme", "MSc Throttled")
    assert [e["status"] for e in client.requests(server="dataverse", since=seq)] == [429, 200]
    assert [v for v, label in programme_options(hook).items() if label == "MSc Throttled"] == [value]


def test_503_is_retried_with_backoff(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=503, server="dataverse", nth=1, times=2)
    assert hook.whoami()["UserId"]
    assert [e["status"] for e in client.requests(server="dataverse", since=seq)] == [503, 503, 200]
    assert hook.stats["retries"] == 2 and hook.stats["throttled"] == 0


def test_max_retries_bounds_attempts(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 2})
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=503, server="dataverse", path="WhoAmI")
    with pytest.raises(DynamicsError) as caught:
        hook.whoami()
    assert caught.value.status == 503 and caught.value.retryable
    assert len(client.requests(server="dataverse", since=seq)) == 3


def test_connection_reset_on_patch_is_retried(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    client.add_fault(kind="reset", server="dataverse", method="PATCH", nth=1)
    result = hook.upsert("leads", {"uni_applicantid": "R-1"}, {"lastname": "Reset", "subject": "s"})
    assert result.status == 204
    assert hook.stats["retries"] == 1
    assert len(stored(client, "R-1")) == 1


def test_connection_reset_on_a_post_action_is_not_retried(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="reset", server="dataverse", method="POST", nth=1)
    with pytest.raises(DynamicsError) as caught:
        hook.insert_option_value("lead", "uni_programme", "MSc Once")  # the label is the call's record
    assert caught.value.code == "ConnectionError" and caught.value.record == "MSc Once"
    assert [e["method"] for e in client.requests(server="dataverse", since=seq)] == ["POST"]
    assert hook.stats["retries"] == 0


def test_503_on_a_post_action_is_not_retried(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    client.add_fault(kind="status", status=503, server="dataverse", method="POST", nth=1)
    with pytest.raises(DynamicsError) as caught:
        hook.insert_option_value("lead", "uni_programme", "MSc Once")
    assert caught.value.status == 503
    assert hook.stats["retries"] == 0


def test_timeout_on_get_is_retried(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"timeout": 0.5})
    hook.whoami()
    client.add_fault(kind="timeout", seconds=1.5, server="dataverse", path="WhoAmI", nth=1)
    assert hook.whoami()["UserId"]
    assert hook.stats["retries"] == 1


def test_throttled_error_carries_retry_after(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 0})
    hook.whoami()
    client.add_fault(kind="status", status=429, retry_after=2, server="dataverse", nth=1)
    with pytest.raises(DynamicsThrottled) as caught:
        hook.whoami()
    assert caught.value.retry_after == 2.0 and caught.value.code == "0x80072322"
