"""The sync lock as the tasks use it: wait, give up naming the holder, renew, lose it, release; the command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline import lock
from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate, LockLost
from d365.pipeline.runfiles import EXTRACT_META, LOCK, LOCK_WAITS, PREFLIGHT, TRANSFORM_OUTCOMES
from d365.tasks.commit import commit_step
from d365.tasks.context import RunContext, release_lock
from d365.tasks.lock import lock_step

INSTANCE = "apply.example.edu"


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def run_context(tmp_path: Path, ledger_url: str, run_id: str, *, require_lock: bool = True) -> RunContext:
    folder = tmp_path / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / PREFLIGHT).write_text(json.dumps({"instance": INSTANCE}))
    return RunContext.create(
        "dag", run_id, {}, run_folder=f"file://{folder}", ledger_url=ledger_url, require_lock=require_lock
    )


def test_a_second_run_waits_then_fails_naming_the_holder(
    tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lock.WAIT_ENV, "0.2")
    holder = run_context(tmp_path, ledger_url, "scheduled__2026-01-01")
    waiting = run_context(tmp_path, ledger_url, "backfill__2025-12-31")
    doc = lock_step(holder, dagrun_timeout=3600)
    assert doc is not None and doc["generation"] == 1 and doc["ttl_seconds"] == 3600 and doc["waited_for"] == []

    assert lock_step(waiting) is None  # held: the sensor asks again later
    (wait,) = waiting.folder.read_jsonl(LOCK_WAITS)
    assert wait["holder"] == "scheduled__2026-01-01"
    time.sleep(0.25)
    with pytest.raises(AirflowFailException) as info:
        lock_step(waiting)
    message = str(info.value)
    assert "scheduled__2026-01-01" in message and INSTANCE in message and lock.RELEASE_COMMAND in message
    assert waiting.folder.read_json(LOCK) is None  # it never took the lock


def test_the_waiting_run_goes_ahead_once_the_holder_released(tmp_path: Path, ledger_url: str) -> None:
    holder = run_context(tmp_path, ledger_url, "r1")
    waiting = run_context(tmp_path, ledger_url, "r2")
    lock_step(holder)
    assert lock_step(waiting) is None
    assert release_lock(holder) == 1
    doc = lock_step(waiting)
    assert doc is not None and doc["generation"] == 2 and doc["waited_for"] == ["r1"] and doc["waited_seconds"] > 0
    assert waiting.hold_lock(Ledger(ledger_url), "extract") == 2
    assert release_lock(holder) == 0  # releasing twice, or someone else's lock: nothing happens


def test_a_step_stops_when_its_run_lost_the_lock(tmp_path: Path, ledger_url: str) -> None:
    first = run_context(tmp_path, ledger_url, "r1")
    lock_step(first)
    ledger = Ledger(ledger_url)
    try:
        assert first.hold_lock(ledger, "extract") == 1
        assert ledger.clear_lock(INSTANCE) == "r1"  # an operator freed it, thinking r1 dead
        assert ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=60).held
        with pytest.raises(AirflowFailException, match="no longer holds the sync lock") as info:
            first.hold_lock(ledger, "plan")
        assert "run r2" in str(info.value)
        # the cursors do not move for a run that lost the lock, whatever the commit step would do
        with pytest.raises(LockLost):
            ledger.advance_cursors(INSTANCE, fence=first.lock_fence(), applicant_id=99)
        assert ledger.cursors(INSTANCE)["applicant_id"] == 0
        ledger.advance_cursors(INSTANCE, fence=("r2", 2), applicant_id=99)
        assert ledger.cursors(INSTANCE)["applicant_id"] == 99
    finally:
        ledger.dispose()


def test_in_the_dag_a_step_without_the_lock_refuses(tmp_path: Path, ledger_url: str) -> None:
    rc = run_context(tmp_path, ledger_url, "r1")  # the lock task never ran
    with pytest.raises(AirflowFailException, match="did not take the sync lock"):
        rc.hold_lock(Ledger(ledger_url), "extract")
    outside = run_context(tmp_path, ledger_url, "r2", require_lock=False)  # a direct caller (tests, scripts)
    assert outside.hold_lock(Ledger(ledger_url), "extract") is None


def test_commit_writes_with_the_generation_moves_cursors_and_releases(tmp_path: Path, ledger_url: str) -> None:
    rc = run_context(tmp_path, ledger_url, "r1")
    doc = lock_step(rc)
    assert doc is not None
    rc.folder.write_jsonl(TRANSFORM_OUTCOMES, [{"applicant_id": 5, "state": "skipped_consent", "reason": "x"}])
    rc.folder.write_json(EXTRACT_META, {"cursors": {"applicant_id": 10, "journal_event_id": 20}})
    ledger = Ledger(ledger_url)
    try:
        # a newer generation wrote applicant 5 already: this run's commit must not replace it
        ledger.record(INSTANCE, [LedgerUpdate(5, LeadState.SENT, lead_id="L5", payload_hash="h")], version=7)
        commit_step(rc)
        assert ledger.entries(INSTANCE, [5])[5].state is LeadState.SENT
        assert ledger.cursors(INSTANCE) == {"applicant_id": 10, "journal_event_id": 20}
        assert ledger.lock_holder(INSTANCE).run_id is None
    finally:
        ledger.dispose()


def test_ttl_follows_the_dag_run_timeout_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lock.ttl_seconds(21600) == 21600
    assert lock.ttl_seconds(None) == lock.DEFAULT_TTL_SECONDS
    monkeypatch.setenv(lock.TTL_ENV, "900")
    assert lock.ttl_seconds(21600) == 900
    for bad in ("-1", "0", "inf", "soon"):
        monkeypatch.setenv(lock.WAIT_ENV, bad)
        with pytest.raises(ValueError, match=lock.WAIT_ENV):
            lock.wait_seconds()


def test_operator_command_shows_and_clears_a_stale_lock(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert lock.main(["--ledger-url", ledger_url, "status"]) == 0
    assert "no sync has taken a lock yet" in capsys.readouterr().out
    Ledger(ledger_url).acquire_lock(INSTANCE, "dead__run", ttl_seconds=3600)
    lock.main(["--ledger-url", ledger_url, "status"])
    out = capsys.readouterr().out
    assert f"{INSTANCE}: held; run dead__run (generation 1" in out
    assert lock.main(["--ledger-url", ledger_url, "release", "--instance", INSTANCE]) == 0
    assert "released the lock of run dead__run" in capsys.readouterr().out
    lock.main(["--ledger-url", ledger_url, "status"])
    assert f"{INSTANCE}: free" in capsys.readouterr().out
    assert Ledger(ledger_url).acquire_lock(INSTANCE, "next", ttl_seconds=60).held


def test_the_load_stops_before_any_request_when_its_run_lost_the_lock(tmp_path: Path, ledger_url: str) -> None:
    from d365.operators.load_leads import LoadLeadsOperator

    rc = run_context(tmp_path, ledger_url, "r1")
    lock_step(rc)
    rc.folder.write_jsonl("plan/operations.jsonl", [{"applicant_id": 1, "action": "create", "payload": {}}])
    ledger = Ledger(ledger_url)
    ledger.clear_lock(INSTANCE)
    assert ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=60).held
    ledger.dispose()
    # no such connection: any request would fail differently; the lock check comes first
    op = LoadLeadsOperator(
        task_id="load",
        run_folder=rc.folder.url,
        instance=INSTANCE,
        ledger_url=ledger_url,
        require_lock=True,
        dynamics365_conn_id="no_such_connection",
    )
    with pytest.raises(AirflowFailException, match="load: run r1 no longer holds the sync lock"):
        op.execute({"run_id": "r1"})  # type: ignore[arg-type]
    (tmp_path / "runs" / "r1" / LOCK).unlink()
    with pytest.raises(AirflowFailException, match="did not take the sync lock"):
        op.execute({"run_id": "r1"})  # type: ignore[arg-type]


def test_a_failed_run_frees_its_lock_through_the_dags_failure_callback(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed by dagrun_timeout never reaches report or watcher: the DAG-level callback frees the lock."""
    from types import SimpleNamespace

    from airflow.models import DagBag

    monkeypatch.setenv("D365_SYNC_LEDGER_URL", ledger_url)
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags")).dags["dreamapply_to_dynamics365"]
    callbacks = dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [dag.on_failure_callback]
    assert lock.release_on_run_failure in callbacks

    ledger = Ledger(ledger_url)
    try:
        assert ledger.acquire_lock(INSTANCE, "scheduled__timed_out", ttl_seconds=3600).held
        lock.release_on_run_failure({"dag_run": SimpleNamespace(run_id="someone__else")})
        assert ledger.lock_holder(INSTANCE).run_id == "scheduled__timed_out"  # only the failed run's own lock
        lock.release_on_run_failure({"dag_run": SimpleNamespace(run_id="scheduled__timed_out")})
        assert ledger.lock_holder(INSTANCE).run_id is None
        assert ledger.acquire_lock(INSTANCE, "backfill__next", ttl_seconds=60).held
    finally:
        ledger.dispose()
