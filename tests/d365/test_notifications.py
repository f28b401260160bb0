"""Failure alerts to the technical contact, received by a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from smtp_sink import SmtpSink, smtp_sink  # noqa: F401 - the fixture

from d365.hooks.errors import DynamicsAuthError, DynamicsError
from d365.notifications import redact, send_mail
from d365.pipeline.settings import REPO_SETTINGS, load_settings
from d365.runtime.alerts import FailureAlert

SECRET = "Sb0x-cl1ent~s3cret.Value_42"
API_KEY = "da-key-7f3e9c2b1a"
CONTACT = "crm-integration@university.example"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, smtp_sink: SmtpSink) -> SmtpSink:  # noqa: F811
    monkeypatch.setenv(
        "AIRFLOW_CONN_DYNAMICS365_DEFAULT",
        json.dumps({"conn_type": "dynamics365", "host": "https://org.example", "login": "cid", "password": SECRET}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DREAMAPPLY_DEFAULT",
        json.dumps({"conn_type": "dreamapply", "host": "https://da.example", "password": API_KEY}),
    )
    monkeypatch.setenv("D365_SYNC_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.delenv("D365_SYNC_SETTINGS", raising=False)
    return smtp_sink


def context(exc: BaseException, task_id: str = "load") -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="dreamapply_to_dynamics365",
        task_id=task_id,
        run_id="scheduled__2026-11-27T10:00:00+00:00",
        try_number=3,
        log_url="http://airflow.example/dags/dreamapply_to_dynamics365/runs/r1/tasks/load?try_number=3",
    )
    return {"ti": ti, "task_instance": ti, "exception": exc, "dag_run": SimpleNamespace(run_id=ti.run_id)}


def test_a_task_failure_mails_the_technical_contact_what_failed_the_link_and_how_to_retry(env: SmtpSink) -> None:
    exc = DynamicsError("service unavailable", status=503, code="0x80072322", method="POST", path="/$batch")
    FailureAlert()(context(exc))
    [mail] = env.wait(1)
    assert mail.rcpt_tos == [CONTACT]
    assert mail.message["To"] == CONTACT
    assert "dreamapply_to_dynamics365" in mail.subject and "load" in mail.subject
    assert "scheduled__2026-11-27T10:00:00+00:00" in mail.subject
    body = mail.text
    assert "http://airflow.example/dags/dreamapply_to_dynamics365/runs/r1/tasks/load?try_number=3" in body
    assert "HTTP 503" in body and "0x80072322" in body and "DynamicsError" in body
    assert "How to retry" in body and "airflow tasks clear dreamapply_to_dynamics365" in body
    assert "airflow dags trigger dreamapply_to_dynamics365" in body and "applicant_ids" in body


def test_an_error_text_carrying_a_secret_is_redacted_in_the_mail(env: SmtpSink) -> None:
    """The error text would leak the client secret and the API key (also URL-encoded) if not redacted."""
    exc = DynamicsAuthError(
        f"AADSTS7000215: invalid client secret {SECRET} (request body client_secret={SECRET.replace('~', '%7E')}); "
        f"DreamApply key {API_KEY}; Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
        status=401,
        code="AADSTS7000215",
    )
    FailureAlert()(context(exc, task_id="extract"))
    [mail] = env.wait(1)
    raw = mail.raw.decode("utf-8", "replace")
    for leaked in (SECRET, SECRET.replace("~", "%7E"), API_KEY, "eyJhbGciOiJIUzI1NiJ9"):
        assert leaked not in raw and leaked not in mail.text
    assert "AADSTS7000215" in mail.text and "***" in mail.text
    assert "irrecoverable" in mail.text


def test_no_technical_contact_sends_nothing(env: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    data["technical_contact"] = None
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("D365_SYNC_SETTINGS", str(path))
    FailureAlert()(context(RuntimeError("boom")))
    assert not send_mail(load_settings(path), subject="s", body="b")
    assert env.wait(1, timeout=0.5) == []


def test_an_unreachable_smtp_server_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("D365_SYNC_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": 9, "extra": {"disable_tls": True}}),
    )
    FailureAlert()(context(RuntimeError("boom")))  # logged, not raised
    assert send_mail(load_settings(), subject="s", body="b") is False


def test_redact_removes_connection_secrets_and_credential_shapes(env: SmtpSink) -> None:
    s = load_settings()
    text = f"x {SECRET} y {API_KEY} password=hunter22 api_key: abcdef123 Bearer abc.def.ghi1234"
    out = redact(text, s)
    assert SECRET not in out and API_KEY not in out
    assert "hunter22" not in out and "abcdef123" not in out and "abc.def.ghi1234" not in out
    assert out.startswith("x *** y ***")


def test_no_alert_for_the_watcher_nor_for_a_run_refused_while_paused(env: SmtpSink) -> None:
    from d365.pause import IntegrationPaused

    FailureAlert()(context(RuntimeError("a task of this run failed"), task_id="watcher"))
    FailureAlert()(context(IntegrationPaused("preflight refused: the integration is paused"), task_id="preflight"))
    assert env.wait(1, timeout=0.5) == []
