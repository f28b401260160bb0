"""A failed lookup by e-mail leaves no address in the error, its traceback or the log: requests/urllib3 put the
whole URL (with its ``$filter``) into their messages, so the hook keeps only the cause's type."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import requests

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.errors import DynamicsError
from sandbox import Sandbox
from sandbox.client import SandboxClient

EMAILS = ["ada.lovelace@example.org", "grace.o'hopper@example.net"]


def email_filter() -> str:
    literal = ",".join("'" + e.replace("'", "''") + "'" for e in EMAILS)
    return f"Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[{literal}]) and statecode eq 0"


def chain(exc: BaseException | None) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def test_a_connection_error_during_an_email_lookup_names_no_address(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="d365")
    caplog.set_level(logging.DEBUG, logger="airflow")
    hook, client = dynamics_private(hook_kwargs={"max_retries": 2})
    hook.backoff_base = 0.01
    hook.whoami()
    rule = client.add_fault(kind="reset", server="dataverse", method="GET", path=r"/leads$")

    with pytest.raises(DynamicsError) as caught:
        list(hook.query("leads", select=["leadid", "emailaddress1"], filter=email_filter()))

    exc = caught.value
    fired = next(r for r in client.get("/faults")["rules"] if r["id"] == rule["id"])["fired"]
    assert fired == 3  # the first try and two retries all met the reset
    assert (exc.code, exc.method, exc.path) == ("ConnectionError", "GET", "/api/data/v9.2/leads")
    assert exc.__cause__ is None and exc.__context__ is None and exc.__suppress_context__
    out = capfd.readouterr()  # the hook logs through Airflow's structlog to the console
    texts = [
        "".join(traceback.format_exception(exc)),
        *(str(e) for e in chain(exc)),
        *(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
        out.out + out.err,
    ]
    assert "ConnectionError" in texts[0] and "/api/data/v9.2/leads" in texts[0]
    assert any("ConnectionError" in t for t in texts[2:]), "the cause's type is logged"
    leaks = [t for t in texts for email in EMAILS if email in t or email.replace("'", "''") in t]
    assert not leaks, leaks


def test_an_unreachable_organization_during_an_email_lookup_names_no_address(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], make_dynamics_hook: Callable[..., DynamicsHook]
) -> None:
    """Connection refused (Dataverse went away after the token was issued): urllib3's "Max retries exceeded with
    url: …" carries the query, addresses included (asserted on a plain requests call, the premise); the hook's
    error and traceback do not."""
    sb, _client = make_sandbox(applicants=10)
    hook = make_dynamics_hook(sb.info(), hook_kwargs={"max_retries": 1})
    hook.backoff_base = 0.01
    hook.whoami()  # token cached: what follows needs no token service
    org = hook.org_url
    sb.stop()

    with pytest.raises(DynamicsError) as caught:
        list(hook.query("leads", select=["leadid"], filter=email_filter()))
    exc = caught.value
    assert exc.code == "ConnectionError" and exc.__cause__ is None and exc.__context__ is None
    shown = "".join(traceback.format_exception(exc))
    assert "/api/data/v9.2/leads" in shown
    assert not [email for email in EMAILS if email in shown or email.replace("'", "''") in shown], shown

    with pytest.raises(requests.ConnectionError) as library:
        requests.get(f"{org}/api/data/v9.2/leads?$filter={email_filter()}", verify=hook.settings.verify, timeout=5)
    assert EMAILS[0] in str(library.value), str(library.value)  # what the hook keeps out


def test_other_request_failures_keep_only_their_type(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]], monkeypatch: Any
) -> None:
    """Any other requests failure (here: an invalid header the library refuses) is typed the same way."""
    hook, _client = dynamics_private(hook_kwargs={"max_retries": 0})
    hook.whoami()
    with pytest.raises(DynamicsError) as caught:
        hook._request("GET", f"leads?$filter=emailaddress1 eq '{EMAILS[0]}'", headers={"X-Bad": "a\nb"})
    exc = caught.value
    assert exc.code == "RequestError" and "InvalidHeader" in exc.message
    assert exc.__cause__ is None and exc.__context__ is None
    assert EMAILS[0] not in "".join(traceback.format_exception(exc))
