"""Alerts and the automatic pause with the real DAG, a private sandbox and a real SMTP server (aiosmtpd).

- a run with record-level problems sends exactly one digest to the technical contact: grouped by cause,
  applicant IDs and reasons only (no name, e-mail, phone, no secret); record-level problems never pause;
- more than ``pause.max_irrecoverable_failures`` irrecoverable failures (a wrong client secret) pause the
  integration with one alert; the next run stops at preflight with the pause message, nothing extracted
  or written; ``python -m d365.pause resume`` lets the next run through.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.helpers import personal_patterns, raw_applicants
from smtp_sink import SmtpSink, smtp_sink  # noqa: F401 - the fixture

from d365.errors import PreflightError
from d365.pause import IntegrationPaused, PauseStore
from d365.pause import main as pause_cli
from d365.pipeline.settings import REPO_SETTINGS, load_settings
from d365.tasks.context import RunContext
from d365.tasks.preflight import preflight

DAG_ID = "dreamapply_to_dynamics365"
CONTACT = "crm-integration@university.example"


def settings_file(tmp_path: Path, change: Any) -> Path:
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def secrets(env: Any) -> list[str]:
    info = env.sandbox.info()
    return [info["entra"]["client_secret"], info["dreamapply"]["api_key"]]


def digests(sink: SmtpSink) -> list[Any]:
    return [m for m in sink.messages if "quarantined applicants in run" in m.subject]


def test_record_level_failures_send_one_digest_without_personal_data_and_never_pause(
    sync_env: Any,
    smtp_sink: SmtpSink,  # noqa: F811
    tmp_path: Path,
) -> None:
    def change(data: dict[str, Any]) -> None:
        data.setdefault("quality", {})["quarantine_missing_email"] = True  # some sandbox applicants have none
        data["pause"] = {"max_irrecoverable_failures": 0}  # any counted failure would pause at once

    env = sync_env(settings=settings_file(tmp_path, change), applicants=60)
    run = env.run()
    assert run.state == "success", run.state
    report = env.reports()[-1]
    problems = {int(q["applicant_id"]) for q in report["quarantine"]} | {
        int(f["applicant_id"]) for f in report["failures"]
    }
    assert problems, report

    [mail] = digests(smtp_sink)
    assert mail.rcpt_tos == [CONTACT]
    text = mail.text
    raw_text = mail.raw.decode("utf-8", "replace") + text
    for aid in problems:
        assert re.search(rf"(?<!\d){aid}(?!\d)", text), aid
    assert "QUARANTINED" in text and "reason:" in text
    assert "How to retry" in text
    leaked = [
        (aid, field)
        for aid, field, pattern in personal_patterns(raw_applicants(env.client))
        if pattern.search(raw_text)
    ]
    assert leaked == []
    for secret in secrets(env):
        assert secret not in raw_text
    # no task failed: no failure alert; record-level problems are not irrecoverable failures
    assert [m.subject for m in smtp_sink.messages if "task failed" in m.subject] == []
    with PauseStore(env.ledger_url) as store:
        assert not store.state().paused
        assert store.failures_since(store_epoch()) == []

    again = env.run()  # nothing new, no record-level problem: no digest
    assert again.state == "success"
    assert not env.reports()[-1]["quarantine"] and not env.reports()[-1]["failures"]
    assert len(digests(smtp_sink)) == 1
    with PauseStore(env.ledger_url) as store:
        assert not store.state().paused


def store_epoch() -> Any:
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


def test_n_irrecoverable_failures_pause_the_loads_and_resume_lets_them_go(
    sync_env: Any,
    smtp_sink: SmtpSink,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 2
    path = settings_file(tmp_path, lambda d: d.update(pause={"max_irrecoverable_failures": n, "window_minutes": 60}))
    env = sync_env(settings=path, applicants=10)
    good = os.environ["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    conn = json.loads(good)
    conn["password"] = "wrong-" + conn["password"][::-1]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))

    def preflight_once(i: int) -> str:
        rc = RunContext.create(
            DAG_ID,
            f"manual__wrong_secret_{i}",
            run_folder="file://" + str(tmp_path / f"run{i}"),
            settings=load_settings(path),
            ledger_url=env.ledger_url,
        )
        with pytest.raises(PreflightError) as info:
            preflight(rc)
        return str(info.value)

    for i in range(n):  # N failures: not more than N, not paused yet
        assert "AADSTS" in preflight_once(i)
        with PauseStore(env.ledger_url) as store:
            assert not store.state().paused
    assert [m for m in smtp_sink.messages if "PAUSED" in m.subject] == []
    preflight_once(n)  # N + 1: paused, one alert
    with PauseStore(env.ledger_url) as store:
        state = store.state()
    assert state.paused and "irrecoverable failures within 60 minutes" in (state.reason or "")
    [alert] = smtp_sink.wait(1)
    assert "PAUSED" in alert.subject and alert.rcpt_tos == [CONTACT]
    assert "python -m d365.pause resume" in alert.text and "AADSTS" in alert.text
    for secret in [*secrets(env), conn["password"]]:
        assert secret not in alert.raw.decode("utf-8", "replace") and secret not in alert.text

    # the secret is fixed, but the integration stays paused: the DAG stops at preflight, nothing is read or written
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", good)
    env.client.clear_requests()
    run = env.run()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["preflight"] == "failed" and states["extract"] == "upstream_failed", states
    assert env.client.requests(server="dreamapply") == [] and env.leads() == []
    assert len([m for m in smtp_sink.messages if "PAUSED" in m.subject]) == 1  # alerted once
    assert [m.subject for m in smtp_sink.messages if "task failed" in m.subject] == []  # no mail per refused run
    rc = RunContext.create(
        DAG_ID, "manual__paused", run_folder="file://" + str(tmp_path / "paused"), settings=load_settings(path)
    )
    with pytest.raises(IntegrationPaused, match=r"the integration is paused since .*python -m d365\.pause resume"):
        preflight(rc)

    assert pause_cli(["--ledger-url", env.ledger_url, "status"]) == 0
    assert "paused since" in capsys.readouterr().out
    assert pause_cli(["--ledger-url", env.ledger_url, "resume"]) == 0
    assert "resumed" in capsys.readouterr().out
    resumed = env.run()
    assert resumed.state == "success", resumed.state
    assert env.leads()
