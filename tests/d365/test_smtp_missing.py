"""No SMTP connection: never the SMTP hook's "SMTP connection is not found" on every mail; with a technical contact
one plain warning per task, without one nothing at all (issue 11, point 6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from d365 import notifications
from d365.notifications import send_mail
from d365.pipeline.settings import REPO_SETTINGS, load_settings
from d365.runtime.alerts import FailureAlert


@pytest.fixture
def no_smtp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    monkeypatch.delenv("D365_SYNC_SETTINGS", raising=False)
    monkeypatch.setenv("D365_SYNC_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setattr(notifications, "_SAID_MISSING", set())


def failure() -> dict[str, object]:
    ti = SimpleNamespace(dag_id="d", task_id="load", run_id="r1", try_number=1, log_url="http://a/log")
    return {"ti": ti, "task_instance": ti, "exception": RuntimeError("boom"), "dag_run": SimpleNamespace(run_id="r1")}


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_a_contact_without_an_smtp_connection_is_said_once_plainly(
    no_smtp: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings()  # the repository's settings: a technical contact, smtp_default
    assert settings.technical_contact
    with caplog.at_level(logging.INFO):
        FailureAlert()(failure())
        assert send_mail(settings, subject="digest", body="b") is False
        assert send_mail(settings, subject="paused", body="b") is False
    said = messages(caplog)
    assert not [m for m in said if "SMTP connection is not found" in m]
    missing = [m for m in said if "SMTP connection 'smtp_default' does not exist" in m]
    assert len(missing) == 1 and "technical_contact is set" in missing[0]


def test_no_contact_no_smtp_says_nothing_about_smtp(
    no_smtp: None, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    data["technical_contact"] = None
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("D365_SYNC_SETTINGS", str(path))
    with caplog.at_level(logging.INFO):
        FailureAlert()(failure())
        assert send_mail(load_settings(path), subject="digest", body="b") is False
    assert not [m for m in messages(caplog) if "SMTP" in m or "smtp" in m]


def test_an_existing_connection_is_used(no_smtp: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": 9}))
    assert notifications.mail_ready(load_settings()) is True
