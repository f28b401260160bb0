"""The automatic pause: irrecoverable failures counted in a window; recoverable ones never count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from smtp_sink import SmtpSink, smtp_sink  # noqa: F401 - the fixture

from d365.errors import PreflightError, PreflightUnavailable
from d365.hooks.errors import (
    DreamApplyAuthError,
    DynamicsAuthError,
    DynamicsError,
    DynamicsThrottled,
    DynamicsValidationError,
)
from d365.pause import IntegrationPaused, PauseStore, failures_table, is_irrecoverable, main, preflight_guard
from d365.pause import record_irrecoverable as record
from d365.pipeline.settings import parse_settings


def settings(n: int = 2, **pause: object):  # type: ignore[no-untyped-def]
    return parse_settings(
        {
            "data_mapping": {"lastname": "applicant.name.family"},
            "technical_contact": "tech@university.example",
            "pause": {"max_irrecoverable_failures": n, **pause},
        }
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_what_counts_as_irrecoverable() -> None:
    assert is_irrecoverable(PreflightError("contact owner not found"))
    assert is_irrecoverable(DynamicsAuthError("AADSTS7000215", status=401))
    assert is_irrecoverable(DreamApplyAuthError("revoked key", status=401))
    for recoverable in (
        DynamicsValidationError("too long", status=400),  # a bad record
        DynamicsError("server error", status=503),
        DynamicsThrottled("slow down", retry_after=1, status=429),
        PreflightUnavailable("connection refused"),
        IntegrationPaused("paused"),
        ValueError("bug"),
        None,
    ):
        assert not is_irrecoverable(recoverable), recoverable


def test_more_than_n_irrecoverable_failures_pause_once_and_alert_once(url: str, smtp_sink: SmtpSink) -> None:  # noqa: F811
    s = settings(2)
    assert not record(DynamicsAuthError("refused", status=401), settings=s, ledger_url=url)
    assert not record(PreflightError("owner missing"), settings=s, ledger_url=url)
    assert record(DreamApplyAuthError("key revoked", status=401), settings=s, ledger_url=url)  # 3 > 2
    assert not record(DreamApplyAuthError("key revoked", status=401), settings=s, ledger_url=url)  # already
    with PauseStore(url) as store:
        state = store.state()
    assert state.paused and "3 irrecoverable failures within 60 minutes" in (state.reason or "")
    [alert] = smtp_sink.wait(2, timeout=0.5)
    assert alert.rcpt_tos == ["tech@university.example"] and "PAUSED" in alert.subject
    assert "python -m d365.pause resume" in alert.text


def test_recoverable_failures_never_count(url: str, smtp_sink: SmtpSink) -> None:  # noqa: F811
    s = settings(0)
    for exc in (DynamicsValidationError("bad record", status=400), DynamicsError("5xx", status=502)):
        assert not record(exc, settings=s, ledger_url=url)
    with PauseStore(url) as store:
        assert not store.state().paused and store.failures_since(datetime(2000, 1, 1, tzinfo=UTC)) == []
    assert smtp_sink.messages == []


def test_failures_older_than_the_window_do_not_count(url: str) -> None:
    s = settings(1, window_minutes=60)
    with PauseStore(url) as store:
        old = datetime.now(UTC) - timedelta(minutes=61)
        with store.engine.begin() as conn:
            for _ in range(5):
                conn.execute(sa.insert(failures_table).values(at=old, kind="DynamicsAuthError", detail="old"))
    assert not record(DynamicsAuthError("refused", status=401), settings=s, ledger_url=url)
    assert record(DynamicsAuthError("refused", status=401), settings=s, ledger_url=url)


def test_pause_disabled_records_but_never_pauses(url: str) -> None:
    s = settings(0, enabled=False)
    assert not record(DynamicsAuthError("refused", status=401), settings=s, ledger_url=url)
    with PauseStore(url) as store:
        assert not store.state().paused and len(store.failures_since(datetime(2000, 1, 1, tzinfo=UTC))) == 1


def test_the_guard_refuses_while_paused_and_records_failures_of_its_body(url: str) -> None:
    s = settings(5)
    with pytest.raises(PreflightError), preflight_guard(s, url):
        raise PreflightError("owner missing")
    with pytest.raises(PreflightUnavailable), preflight_guard(s, url):
        raise PreflightUnavailable("timeout")  # recoverable: not recorded
    with PauseStore(url) as store:
        assert [f["kind"] for f in store.failures_since(datetime(2000, 1, 1, tzinfo=UTC))] == ["PreflightError"]
        store.pause("by hand")
    with (
        pytest.raises(IntegrationPaused, match=r"paused since .*by hand.*python -m d365\.pause resume"),
        preflight_guard(s, url),
    ):
        raise AssertionError("the body must not run while paused")
    with PauseStore(url) as store:  # the refusal itself is not a counted failure
        assert len(store.failures_since(datetime(2000, 1, 1, tzinfo=UTC))) == 1


def test_cli_status_pause_resume(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ledger-url", url, "status"]) == 0
    assert "not paused" in capsys.readouterr().out
    main(["--ledger-url", url, "pause", "--reason", "CRM maintenance"])
    assert "CRM maintenance" in capsys.readouterr().out
    main(["--ledger-url", url, "resume"])
    assert "was paused: CRM maintenance" in capsys.readouterr().out
    with PauseStore(url) as store:
        assert not store.state().paused
