"""Parking: consecutive failed runs counted per applicant (reset on success, once per run), parked after N,
released by the command. On SQLite and PostgreSQL (the ``ledger`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from d365.parking import main
from d365.pipeline.digest import build_digest
from d365.pipeline.ledger import (
    LeadState,
    Ledger,
    LedgerUpdate,
    park_failing,
    parked_records,
    release_parked,
)
from d365.pipeline.report import summary_text
from d365.pipeline.settings import SettingsError, parse_settings

INSTANCE = "apply.example.edu"


def fail(ledger: Ledger, run: str, *ids: int, code: str = "0x80040203") -> None:
    ledger.record(
        INSTANCE, [LedgerUpdate(i, LeadState.FAILED, error_code=code, error="refused") for i in ids], run_id=run
    )


def attempts(ledger: Ledger, aid: int) -> int:
    return ledger.entries(INSTANCE, [aid])[aid].attempts


def test_failed_runs_are_counted_once_per_run_and_reset_by_success(ledger: Ledger) -> None:
    fail(ledger, "r1", 1, 2)
    fail(ledger, "r1", 1)  # the same run again (a second batch, a retried task): still one failed run
    assert attempts(ledger, 1) == 1
    fail(ledger, "r2", 1, 2)
    fail(ledger, "r3", 1)
    assert (attempts(ledger, 1), attempts(ledger, 2)) == (3, 2)
    ledger.record(INSTANCE, [LedgerUpdate(2, LeadState.SENT, payload_hash="h", synced=True)], run_id="r3")
    assert attempts(ledger, 2) == 0  # a success ends the streak
    fail(ledger, "r4", 2)
    assert attempts(ledger, 2) == 1


def test_park_after_n_failed_runs_in_a_row_then_release(ledger: Ledger) -> None:
    for run in ("r1", "r2", "r3", "r4"):
        fail(ledger, run, 10, 11)
    fail(ledger, "r5", 10)  # 11 did not fail in r5 (not attempted): 4 failed runs, not parked
    newly = park_failing(ledger, INSTANCE, 5, run_id="r5")
    parked = parked_records(ledger, INSTANCE)
    assert newly == parked
    assert [(r.applicant_id, r.failed_runs, r.last_error_code, r.run_id) for r in parked] == [
        (10, 5, "0x80040203", "r5")
    ]
    assert park_failing(ledger, INSTANCE, 5, run_id="r6") == []  # parked once
    assert ledger.entries(INSTANCE, [10])[10].state is LeadState.FAILED  # the row keeps its state and error
    assert park_failing(ledger, "other.example.edu", 5) == []
    released = release_parked(ledger, instance=INSTANCE, applicant_ids=[10, 99])
    assert [r.applicant_id for r in released] == [10]
    assert parked_records(ledger, INSTANCE) == [] and attempts(ledger, 10) == 0
    assert ledger.entries(INSTANCE, [10])[10].state is LeadState.FAILED  # the next run retries it


def test_newly_parked_is_returned_and_zero_never_parks(ledger: Ledger) -> None:
    for run in ("r1", "r2"):
        fail(ledger, run, 7)
    assert park_failing(ledger, INSTANCE, 0) == []
    newly = park_failing(ledger, INSTANCE, 2, run_id="r2")
    assert [(r.applicant_id, r.failed_runs) for r in newly] == [(7, 2)]
    assert newly[0].to_json()["error_code"] == "0x80040203"


def test_the_release_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    try:
        for run in ("r1", "r2"):
            fail(ledger, run, 21, 22, 23)
        park_failing(ledger, INSTANCE, 2)
        assert main(["--ledger-url", url, "list"]) == 0
        out = capsys.readouterr().out
        assert "parked applicants: 3" in out and "21" in out and "0x80040203" in out
        assert main(["--ledger-url", url, "release", "21,22", "999"]) == 0
        out = capsys.readouterr().out
        assert "released 2" in out and "not parked (nothing to release): 999" in out
        assert [r.applicant_id for r in parked_records(ledger, INSTANCE)] == [23]
        with pytest.raises(SystemExit):
            main(["--ledger-url", url, "release"])  # ids or --all
        with pytest.raises(SystemExit):
            main(["--ledger-url", url, "release", "abc"])
        assert main(["--ledger-url", url, "release", "--all"]) == 0
        assert parked_records(ledger) == []
    finally:
        ledger.dispose()


def test_setting_and_its_checks() -> None:
    base = {"data_mapping": {"lastname": "applicant.name.family"}}
    assert parse_settings(base).parking.max_failed_runs == 5
    assert parse_settings({**base, "parking": {"max_failed_runs": 2}}).parking.max_failed_runs == 2
    for wrong in (True, -1, "5"):
        with pytest.raises(SettingsError) as caught:
            parse_settings({**base, "parking": {"max_failed_runs": wrong}})
        assert "parking.max_failed_runs" in str(caught.value)


def test_report_summary_and_digest_list_the_parked() -> None:
    report = {
        "dag_id": "dreamapply_to_dynamics365",
        "run_id": "r5",
        "extracted": 3,
        "outcomes": {"created": 0, "updated": 0, "unchanged": 0, "failed": 1, "parked": 1},
        "failures": [{"applicant_id": 10, "error_code": "0x80040203", "error": "refused"}],
        "quarantine": [],
        "parked": {
            "newly_parked": [{"applicant_id": 10, "failed_runs": 5, "error_code": "0x80040203"}],
            "held_back": [11],
            "total": 2,
            "max_failed_runs": 5,
        },
    }
    text = summary_text(report)
    assert "parked (failed too many runs in a row; not sent until released): 1" in text
    assert "parked: 1 new after 5 failed runs in a row, 2 in all" in text and "python -m d365.parking" in text
    subject, body = build_digest(report) or ("", "")
    assert "1 parked" in subject
    assert "PARKED" in body and "error code 0x80040203: 10" in body and "python -m d365.parking release" in body
    only_parked = {**report, "failures": []}
    assert build_digest(only_parked) is not None  # a newly parked record alone is worth a mail
    nothing = {**report, "failures": [], "parked": {"newly_parked": [], "held_back": [11], "total": 2}}
    assert build_digest(nothing) is None  # records already parked are not mailed again each run
