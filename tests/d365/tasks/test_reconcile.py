"""The nightly DAG's tasks (``d365.tasks.reconcile``) against the sandbox over HTTPS, with a SQLite ledger:
reconciliation finds a lead deleted in the CRM and refuses when too many read as deleted; retention writes its
report into the run's folder."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from d365.hooks.dreamapply import DreamApplyHook
from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate
from d365.pipeline.runfiles import RECONCILE_REPORT, RETENTION_REPORT
from d365.pipeline.settings import load_settings
from d365.runtime.runfolder import RunFolder
from d365.tasks.context import dreamapply_instance
from d365.tasks.reconcile import reconcile_step, retention_step

DAG = "reconcile_dreamapply_leads"


def _ledger_with(connected: Any, ledger_url: str, live: int, gone: int) -> str:
    """``live`` sent leads that exist in the sandbox's Dynamics and ``gone`` that do not; returns the instance."""
    created = connected.post(
        "/dataverse/leads", [{"lastname": f"Reconcile{i}", "subject": "test"} for i in range(live)]
    )["ids"]
    instance = dreamapply_instance(DreamApplyHook(load_settings().dreamapply.connection_id))
    ledger = Ledger(ledger_url)
    try:
        rows = [
            LedgerUpdate(i + 1, LeadState.SENT, lead_id=lead, payload_hash="h", synced=True)
            for i, lead in enumerate(created)
        ]
        rows += [
            LedgerUpdate(1000 + i, LeadState.SENT, lead_id=str(uuid.uuid4()), payload_hash="h", synced=True)
            for i in range(gone)
        ]
        ledger.record(instance, rows, run_id="scheduled__seed")
    finally:
        ledger.dispose()
    return instance


def test_reconcile_reports_a_lead_deleted_in_the_crm(connected: Any, tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _ledger_with(connected, ledger_url, live=30, gone=1)
    counts = reconcile_step(DAG, "scheduled__r1", ledger_url=ledger_url)
    assert counts["deleted"] == 1  # 1 of 31 (3 %) is under the 5 % cap
    report = RunFolder.for_run(DAG, "scheduled__r1").read_json(RECONCILE_REPORT)
    assert report["counts"] == counts and report["target"]["entity_set"] == "leads"


def test_reconcile_refuses_when_too_many_leads_read_as_deleted(connected: Any, tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    instance = _ledger_with(connected, ledger_url, live=2, gone=2)
    with pytest.raises(AirflowFailException, match="reconciliation refused"):
        reconcile_step(DAG, "scheduled__r2", ledger_url=ledger_url)
    ledger = Ledger(ledger_url)
    try:  # nothing was marked: every row is still sent
        assert {e.state for e in ledger.entries(instance, [1, 2, 1000, 1001]).values()} == {LeadState.SENT}
    finally:
        ledger.dispose()
    assert RunFolder.for_run(DAG, "scheduled__r2").read_json(RECONCILE_REPORT)["refused"]


def test_retention_writes_what_it_deleted_into_the_runs_folder(connected: Any) -> None:
    counts = retention_step(DAG, "scheduled__r3")
    assert counts and all(isinstance(v, int) for v in counts.values())
    assert RunFolder.for_run(DAG, "scheduled__r3").read_json(RETENTION_REPORT) is not None
