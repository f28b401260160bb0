"""The ledger behaves the same on SQLite and PostgreSQL: bulk upserts, failures, cursors, scrubbing, the
per-instance lock and the version rule."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from d365.pipeline.identity import instance_key, lead_id_for
from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate, ledger_table

INSTANCE = "apply.example.edu"


def test_lead_ids_are_deterministic_per_instance_and_applicant() -> None:
    a = lead_id_for("https://Apply.Example.edu/", 42)
    assert a == lead_id_for("apply.example.edu", 42) == lead_id_for("https://apply.example.edu:443", 42)
    assert a != lead_id_for("apply.example.edu", 43)
    assert a != lead_id_for("other.example.edu", 42)
    assert instance_key("https://127.0.0.1:8445") == "127.0.0.1:8445"


def test_record_then_read_back(ledger: Ledger) -> None:
    ledger.record(
        INSTANCE,
        [
            LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h1", synced=True),
            LedgerUpdate(2, LeadState.SKIPPED_CONSENT, reason="consent 1 not accepted"),
            LedgerUpdate(3, LeadState.QUARANTINED, reason="email: not an address"),
        ],
        run_id="r1",
    )
    got = ledger.entries(INSTANCE, [1, 2, 3, 4])
    assert set(got) == {1, 2, 3}
    assert got[1].lead_id == "L1" and got[1].payload_hash == "h1" and got[1].state is LeadState.SENT
    assert got[2].state is LeadState.SKIPPED_CONSENT and got[2].reason == "consent 1 not accepted"
    assert ledger.counts(INSTANCE) == {"sent": 1, "skipped_consent": 1, "quarantined": 1}
    assert ledger.entries("other.instance") == {}


def test_failure_keeps_last_good_hash_and_counts_attempts(ledger: Ledger) -> None:
    ledger.record(INSTANCE, [LedgerUpdate(7, LeadState.SENT, lead_id="L7", payload_hash="good", synced=True)])
    for _ in range(2):
        ledger.record(
            INSTANCE,
            [LedgerUpdate(7, LeadState.FAILED, payload_hash="new", error_code="0x80044331", error="too long")],
        )
    entry = ledger.entries(INSTANCE, [7])[7]
    assert entry.state is LeadState.FAILED
    assert entry.payload_hash == "good"  # the lead still holds the old payload
    assert entry.lead_id == "L7"
    assert entry.attempts == 2
    assert entry.last_error_code == "0x80044331"
    assert ledger.ids_in_state(INSTANCE, LeadState.FAILED) == [7]
    ledger.record(INSTANCE, [LedgerUpdate(7, LeadState.SENT, lead_id="L7", payload_hash="new", synced=True)])
    entry = ledger.entries(INSTANCE, [7])[7]
    assert (entry.state, entry.payload_hash, entry.attempts, entry.last_error_code) == (LeadState.SENT, "new", 0, None)


def test_adoption_is_sticky(ledger: Ledger) -> None:
    ledger.record(INSTANCE, [LedgerUpdate(9, LeadState.SENT, lead_id="PRE", adopted=True, synced=True)])
    ledger.record(INSTANCE, [LedgerUpdate(9, LeadState.SENT, lead_id="PRE", synced=True)])
    assert ledger.entries(INSTANCE, [9])[9].adopted is True


def test_cursors_only_move_forward(ledger: Ledger) -> None:
    assert ledger.cursors(INSTANCE) == {"applicant_id": 0, "journal_event_id": 0}
    ledger.advance_cursors(INSTANCE, applicant_id=100, journal_event_id=5000)
    ledger.advance_cursors(INSTANCE, applicant_id=90, journal_event_id=6000)
    assert ledger.cursors(INSTANCE) == {"applicant_id": 100, "journal_event_id": 6000}
    ledger.reset_cursors(INSTANCE)
    assert ledger.cursors(INSTANCE) == {"applicant_id": 0, "journal_event_id": 0}


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
def test_bulk_upsert_of_many_rows(ledger: Ledger) -> None:
    n = 12_000
    ledger.record(
        INSTANCE, (LedgerUpdate(i, LeadState.SENT, lead_id=f"L{i}", payload_hash="h", synced=True) for i in range(n))
    )
    ledger.record(
        INSTANCE,
        (LedgerUpdate(i, LeadState.SENT, lead_id=f"L{i}", payload_hash="h2", synced=True) for i in range(0, n, 2)),
    )
    entries = ledger.entries(INSTANCE)
    assert len(entries) == n
    assert sum(e.payload_hash == "h2" for e in entries.values()) == n // 2


def test_scrub_keeps_the_proof_and_drops_the_rest(ledger: Ledger) -> None:
    ledger.record(INSTANCE, [LedgerUpdate(5, LeadState.FAILED, error_code="x", error="Jane Doe's email bad")])
    assert ledger.scrub(INSTANCE, [5], reason="request_to_be_forgotten") == 1
    entry = ledger.entries(INSTANCE, [5])[5]
    assert entry.state is LeadState.ERASED and entry.last_error_code is None and entry.payload_hash is None


def test_concurrent_writers_do_not_lose_rows(ledger: Ledger) -> None:
    def write(offset: int) -> None:
        ledger.record(
            INSTANCE, [LedgerUpdate(offset + i, LeadState.SENT, lead_id="L", synced=True) for i in range(300)]
        )

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.entries(INSTANCE)) == 1200


# -- the per-instance lock (d365_sync_lock) ---------------------------------------------------------


def test_lock_acquire_contend_release(ledger: Ledger) -> None:
    assert ledger.lock_holder(INSTANCE) is None
    first = ledger.acquire_lock(INSTANCE, "scheduled__1", ttl_seconds=600)
    assert first.held and first.run_id == "scheduled__1" and first.generation == 1
    assert first.expires_ms - first.acquired_ms == 600_000

    other = ledger.acquire_lock(INSTANCE, "backfill__1", ttl_seconds=600)
    assert not other.held and other.run_id == "scheduled__1" and other.generation == 1
    assert ledger.acquire_lock("other.instance", "backfill__1", ttl_seconds=600).held  # per instance

    again = ledger.acquire_lock(INSTANCE, "scheduled__1", ttl_seconds=900)  # a retried task: same generation
    assert again.held and again.generation == 1 and again.acquired_ms == first.acquired_ms

    assert ledger.release_lock(INSTANCE, "backfill__1") == 0  # not the holder: nothing happens
    assert ledger.lock_holder(INSTANCE).run_id == "scheduled__1"
    assert ledger.release_lock(INSTANCE, "scheduled__1") == 1
    freed = ledger.lock_holder(INSTANCE)
    assert freed is not None and freed.run_id is None and freed.generation == 1

    taken = ledger.acquire_lock(INSTANCE, "backfill__1", ttl_seconds=600)
    assert taken.held and taken.generation == 2  # generations only grow, across releases


def test_lock_expires_and_the_old_holder_loses_it(ledger: Ledger) -> None:
    ledger.acquire_lock(INSTANCE, "dead__run", ttl_seconds=0.05)
    assert ledger.renew_lock(INSTANCE, "dead__run", ttl_seconds=0.05, generation=1).held  # expired, not taken
    time.sleep(0.1)
    assert ledger.lock_holder(INSTANCE).expired()
    taken = ledger.acquire_lock(INSTANCE, "next__run", ttl_seconds=600)
    assert taken.held and taken.generation == 2
    lost = ledger.renew_lock(INSTANCE, "dead__run", ttl_seconds=600, generation=1)
    assert not lost.held and lost.run_id == "next__run"
    # the same run id with a stale generation (a zombie of an earlier attempt) is not the holder either
    ledger.release_lock(INSTANCE, "next__run")
    ledger.acquire_lock(INSTANCE, "dead__run", ttl_seconds=600)
    assert not ledger.renew_lock(INSTANCE, "dead__run", ttl_seconds=600, generation=1).held
    assert ledger.renew_lock(INSTANCE, "dead__run", ttl_seconds=600, generation=3).held


def test_a_released_lock_is_retaken_by_its_run_only_if_nobody_took_it_since(ledger: Ledger) -> None:
    """A failed task cleared after its run released the lock (report/watcher) may go on: the generation
    proves no other run read the cursors in between. Once another run took it, never."""
    ledger.acquire_lock(INSTANCE, "r1", ttl_seconds=60)
    ledger.release_lock(INSTANCE, "r1")
    again = ledger.renew_lock(INSTANCE, "r1", ttl_seconds=60, generation=1)
    assert again.held and again.run_id == "r1" and again.generation == 1
    assert not ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=60).held
    ledger.release_lock(INSTANCE, "r1")
    assert ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=60).held
    ledger.release_lock(INSTANCE, "r2")
    lost = ledger.renew_lock(INSTANCE, "r1", ttl_seconds=60, generation=1)
    assert not lost.held and lost.run_id is None and lost.generation == 2
    assert not ledger.renew_lock(INSTANCE, "r1", ttl_seconds=60).held  # without a generation: holder only


def test_lock_renew_extends_the_expiry(ledger: Ledger) -> None:
    first = ledger.acquire_lock(INSTANCE, "r1", ttl_seconds=1)
    time.sleep(0.02)
    renewed = ledger.renew_lock(INSTANCE, "r1", ttl_seconds=600, generation=first.generation)
    assert renewed.held and renewed.expires_ms > first.expires_ms + 500_000
    assert not ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=600).held


def test_clear_lock_frees_it_whoever_holds_it(ledger: Ledger) -> None:
    assert ledger.clear_lock(INSTANCE) is None
    ledger.acquire_lock(INSTANCE, "stuck__run", ttl_seconds=3600)
    assert ledger.clear_lock(INSTANCE) == "stuck__run"
    assert ledger.acquire_lock(INSTANCE, "r2", ttl_seconds=60).held
    assert [lease.instance for lease in ledger.locks()] == [INSTANCE]


def test_lock_release_without_instance_frees_every_instance_of_the_run(ledger: Ledger) -> None:
    ledger.acquire_lock("a.example.edu", "r1", ttl_seconds=60)
    ledger.acquire_lock("b.example.edu", "r1", ttl_seconds=60)
    assert ledger.release_lock(None, "r1") == 2
    assert all(lease.run_id is None for lease in ledger.locks())


def test_lock_race_has_exactly_one_winner(ledger: Ledger) -> None:
    """Many runs asking at the same moment from separate engines (as separate task processes do)."""
    barrier = threading.Barrier(6)
    won: list[str] = []

    def ask(run_id: str) -> None:
        own = Ledger(ledger.url)
        try:
            barrier.wait()
            if own.acquire_lock(INSTANCE, run_id, ttl_seconds=600).held:
                won.append(run_id)
        finally:
            own.dispose()

    threads = [threading.Thread(target=ask, args=(f"run{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    holder = ledger.lock_holder(INSTANCE)
    assert holder.run_id == won[0] and holder.generation == 1


# -- the version rule: an older run's write never replaces a newer one -------------------------------------


def test_older_generation_never_overwrites_a_newer_payload(ledger: Ledger) -> None:
    ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="old", synced=True)], version=4)
    written = ledger.record(
        INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="new", synced=True)], version=5
    )
    assert written == 1
    # the run of generation 4 comes back late (lost its lock): its write is ignored, row by row
    written = ledger.record(
        INSTANCE,
        [
            LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="old", synced=True),
            LedgerUpdate(2, LeadState.SENT, lead_id="L2", payload_hash="x", synced=True),  # a new row is fine
        ],
        version=4,
    )
    assert written == 1
    entries = ledger.entries(INSTANCE, [1, 2])
    assert entries[1].payload_hash == "new" and entries[2].payload_hash == "x"
    # a stale failure does not count an attempt, a stale deletion does not forget the lead id
    ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.FAILED, error_code="x")], version=3)
    ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.WITHDRAWN, clear_lead_id=True)], version=3)
    entry = ledger.entries(INSTANCE, [1])[1]
    assert (entry.state, entry.attempts, entry.lead_id) == (LeadState.SENT, 0, "L1")
    # the same generation writes many times (load after each batch, then commit); newer ones always
    assert ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="n2")], version=5)
    assert ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="n3")], version=9)
    assert ledger.entries(INSTANCE, [1])[1].payload_hash == "n3"


def test_unversioned_writes_apply_and_keep_the_version(ledger: Ledger) -> None:
    """Writers without a lock (the reconciliation marking a lead deleted) still apply; the row's version stays,
    so an older run remains unable to overwrite it."""
    ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h", synced=True)], version=7)
    assert ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.FAILED, reason="deleted in CRM")]) == 1
    assert ledger.entries(INSTANCE, [1])[1].state is LeadState.FAILED
    assert ledger.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="old")], version=6) == 0
    assert ledger.entries(INSTANCE, [1])[1].state is LeadState.FAILED


def test_concurrent_versioned_writers_keep_the_newest(ledger: Ledger) -> None:
    """Writers of generations 1..8 race on the same rows: whatever the order, every row ends at generation 8."""
    barrier = threading.Barrier(8)

    def write(generation: int) -> None:
        own = Ledger(ledger.url)
        try:
            barrier.wait()
            own.record(
                INSTANCE,
                [LedgerUpdate(i, LeadState.SENT, lead_id="L", payload_hash=f"g{generation}") for i in range(200)],
                version=generation,
            )
        finally:
            own.dispose()

    threads = [threading.Thread(target=write, args=(g,)) for g in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {e.payload_hash for e in ledger.entries(INSTANCE).values()} == {"g8"}


def test_a_ledger_created_before_the_version_column_gets_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    old = sa.MetaData()
    cols = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=False)
        for c in ledger_table.columns
        if c.name != "version"
    ]
    sa.Table(ledger_table.name, old, *cols)
    old.create_all(engine)
    engine.dispose()
    led = Ledger(url)
    try:
        led.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h")], version=2)
        assert led.record(INSTANCE, [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="o")], version=1) == 0
    finally:
        led.dispose()
