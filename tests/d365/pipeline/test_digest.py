"""The per-run digest: grouped by cause, applicant IDs and reasons only, sent once through a real SMTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smtp_sink import SmtpSink, smtp_sink  # noqa: F401 - the fixture

from d365.notifications import send_mail
from d365.pipeline.digest import build_digest, group_causes, send_digest
from d365.pipeline.settings import load_settings

REPORT = {
    "dag_id": "dreamapply_to_dynamics365",
    "run_id": "scheduled__2026-11-27T10:00:00+00:00",
    "failures": [
        {"applicant_id": 12, "error_code": "0x80040237", "error": "Dynamics 365 | HTTP 400: a value is too long"},
        {"applicant_id": 7, "error_code": "0x80040237", "error": "Dynamics 365 | HTTP 400: a value is too long"},
        {"applicant_id": 30, "error_code": "not_loaded", "error": "the load did not reach this record"},
    ],
    "quarantine": [
        {"applicant_id": 3, "reason": "email: not a valid address"},
        {"applicant_id": 4, "reason": "email: not a valid address"},
        {"applicant_id": 5, "reason": "phone: cannot be parsed"},
    ],
}


def test_failures_group_by_error_code_and_quarantines_by_reason() -> None:
    causes = group_causes(REPORT)
    assert [(c.kind, c.cause, c.applicant_ids) for c in causes] == [
        ("failed", "0x80040237", (7, 12)),
        ("failed", "not_loaded", (30,)),
        ("quarantined", "email: not a valid address", (3, 4)),
        ("quarantined", "phone: cannot be parsed", (5,)),
    ]


def test_the_digest_names_counts_ids_reasons_and_how_to_retry() -> None:
    subject, body = build_digest(REPORT)  # type: ignore[misc]
    assert subject == "[d365 sync] 3 failed, 3 quarantined applicants in run scheduled__2026-11-27T10:00:00+00:00"
    assert "FAILED — error code: 0x80040237 — 2 applicant(s)" in body
    assert "applicant IDs: 7, 12" in body and "reason: Dynamics 365 | HTTP 400: a value is too long" in body
    assert "QUARANTINED — reason: email: not a valid address — 2 applicant(s)" in body
    assert "How to retry" in body and '"applicant_ids": [123, 456]' in body


def test_a_long_cause_lists_at_most_max_ids() -> None:
    report = {"quarantine": [{"applicant_id": i, "reason": "r"} for i in range(1, 11)]}
    _, body = build_digest(report, max_ids=3)  # type: ignore[misc]
    assert "applicant IDs: 1, 2, 3 … and 7 more" in body and "10 applicant(s)" in body


def test_no_failure_no_digest() -> None:
    assert build_digest({"failures": [], "quarantine": []}) is None


def test_the_digest_arrives_once_redacted(
    smtp_sink: SmtpSink,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secret = "s3cret-in-an-error-text"
    monkeypatch.delenv("D365_SYNC_SETTINGS", raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_DYNAMICS365_DEFAULT",
        json.dumps({"conn_type": "dynamics365", "host": "https://org.example", "login": "c", "password": secret}),
    )
    report = {**REPORT, "failures": [{"applicant_id": 1, "error_code": "x", "error": f"echoed {secret}"}]}
    assert send_digest(load_settings(), report, send_mail)
    [mail] = smtp_sink.wait(1)
    assert mail.rcpt_tos == ["crm-integration@university.example"]
    assert "quarantined applicants in run" in mail.subject
    assert secret not in mail.raw.decode("utf-8", "replace") and secret not in mail.text
    assert "echoed ***" in mail.text
    assert not send_digest(load_settings(), {"failures": [], "quarantine": []}, send_mail)
    assert len(smtp_sink.wait(2, timeout=0.3)) == 1


def test_the_digest_goes_through_the_send_it_is_given_and_only_when_asked_for() -> None:
    """The pipeline builds the digest; the caller (the report task: ``notifications.send_mail``) sends it."""
    sent: list[tuple[str, str]] = []

    def send(settings: object, *, subject: str, body: str) -> bool:
        sent.append((subject, body))
        return True

    settings = load_settings()
    assert send_digest(settings, REPORT, send)
    assert [subject for subject, _ in sent] == [build_digest(REPORT)[0]]  # type: ignore[index]
    off = settings.model_copy(update={"alerts": settings.alerts.model_copy(update={"digest": False})})
    assert not send_digest(off, REPORT, send)
    assert not send_digest(settings, {"failures": [], "quarantine": []}, send)
    assert len(sent) == 1
