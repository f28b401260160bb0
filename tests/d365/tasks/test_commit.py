"""The commit task (``d365.tasks.commit``) over a temp run folder and a SQLite ledger: outcomes recorded, the
cursors advanced (never on a manual send), the lock released. Erasures: tests/d365/pipeline/test_privacy.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.runfiles import (
    COMMIT_PARKED,
    COMMIT_PRIVACY,
    EXTRACT_META,
    PLAN_OPERATIONS,
    PREFLIGHT,
    TRANSFORM_OUTCOMES,
)
from d365.pipeline.settings import load_settings
from d365.tasks.commit import commit_step
from d365.tasks.context import RunContext

INSTANCE = "commit.example"


def run(tmp_path: Path, params: dict[str, object]) -> RunContext:
    rc = RunContext.create(
        "dag", "r1", params, settings=load_settings(), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    rc.folder.write_json(PREFLIGHT, {"instance": INSTANCE})
    rc.folder.write_json(EXTRACT_META, {"cursors": {"applicant_id": 12, "journal_event_id": 30}})
    rc.folder.write_jsonl(
        TRANSFORM_OUTCOMES,
        [
            {"applicant_id": 5, "state": "skipped_consent", "reason": "required consent not accepted"},
            {"applicant_id": 6, "state": "quarantined", "reason": "email: invalid syntax"},
            {"applicant_id": "not an id", "state": "quarantined", "reason": "no id"},
        ],
    )
    rc.folder.write_jsonl(PLAN_OPERATIONS, [])
    return rc


@pytest.fixture(autouse=True)
def run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))


def test_commit_records_the_outcomes_and_advances_the_cursors(tmp_path: Path) -> None:
    rc = run(tmp_path, {})
    out = commit_step(rc)
    assert out == {"cursors": {"applicant_id": 12, "journal_event_id": 30}, "erased": 0, "withdrawn": 0}
    ledger = Ledger(rc.ledger_url)
    try:
        entries = ledger.entries(INSTANCE, [5, 6])
        assert (entries[5].state, entries[6].state) == (LeadState.SKIPPED_CONSENT, LeadState.QUARANTINED)
        assert ledger.cursors(INSTANCE) == {"applicant_id": 12, "journal_event_id": 30}
    finally:
        ledger.dispose()
    assert rc.folder.read_json(COMMIT_PRIVACY) == {"erased": 0, "erase_failures": [], "scrubbed": 0}
    assert rc.folder.read_json(COMMIT_PARKED) == {"newly_parked": [], "total": 0}


def test_a_manual_send_leaves_the_cursors_where_they_were(tmp_path: Path) -> None:
    rc = run(tmp_path, {"applicant_ids": [5, 6]})
    assert commit_step(rc)["cursors"] == {"applicant_id": 0, "journal_event_id": 0}
