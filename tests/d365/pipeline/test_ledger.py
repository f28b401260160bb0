"""The ledger behaves the same on SQLite and PostgreSQL: bulk upserts, failures, cursors, scrubbing."""

from __future__ import annotations

import threading

from d365.pipeline.identity import instance_key, lead_id_for
from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate

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
