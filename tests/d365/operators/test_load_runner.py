"""The load's batch loop (``d365.operators.load_runner``): answers recorded as they come, transient failures sent
again, any other failure stops the loop after what is on its way is recorded; ledger outcomes (no network)."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from d365.hooks.dynamics_batch import BatchResult
from d365.hooks.errors import DynamicsAuthError, DynamicsError, DynamicsNotFound
from d365.operators.load_runner import LoadRecorder, outcomes, run_batches
from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.plan import CREATE, ERASE, WITHDRAW, Operation

INSTANCE = "runner.example"


def result(op: Operation, status: int | None, error: Exception | None = None) -> BatchResult:
    return BatchResult(operation=op, status=status, error=error)  # type: ignore[arg-type]


def creates(first: int, n: int) -> list[Operation]:
    return [Operation(aid, CREATE, f"L{aid}", f"h{aid}", {"lastname": f"X{aid}"}) for aid in range(first, first + n)]


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[LoadRecorder]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    counts = {"batches": 0, "resent_batches": 0, "resent_operations": 0}
    yield LoadRecorder(
        ledger=ledger,
        instance=INSTANCE,
        results=io.StringIO(),
        run_id="r1",
        version=None,
        counts=counts,
        log=logging.getLogger("test.load_runner"),
    )
    ledger.dispose()


def test_transient_failures_are_sent_again_and_everything_is_recorded_once(recorder: LoadRecorder) -> None:
    calls: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def send(chunk: list[Operation]) -> Sequence[Any]:
        with lock:
            calls.append(tuple(op.applicant_id for op in chunk))
            seen = calls.count(tuple(op.applicant_id for op in chunk))
        if chunk[0].applicant_id == 1 and seen == 1:
            raise DynamicsError("Service Unavailable", status=503)  # the whole batch, after the hook's retries
        # the second operation of the batch from 11 is answered 429 the first time: only it is sent again
        return [result(op, 429 if op.applicant_id == 12 and len(chunk) == 3 else 204) for op in chunk]

    batches = iter([creates(1, 3), creates(11, 3), creates(21, 3)])
    failure = run_batches(send, batches, workers=2, batch_attempts=3, recorder=recorder)
    assert failure is None
    entries = recorder.ledger.entries(INSTANCE)
    assert sorted(entries) == [1, 2, 3, 11, 12, 13, 21, 22, 23]
    assert all(e.state is LeadState.SENT for e in entries.values())
    assert recorder.counts == {"batches": 4, "resent_batches": 1, "resent_operations": 1}
    assert sorted(calls) == sorted([(1, 2, 3), (1, 2, 3), (11, 12, 13), (12,), (21, 22, 23)])
    lines = recorder.results.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 9


def test_an_authentication_failure_stops_the_loop_after_recording_what_was_answered(recorder: LoadRecorder) -> None:
    refused = DynamicsAuthError("token request failed", code="AADSTS7000215")

    def send(chunk: list[Operation]) -> Sequence[Any]:
        if chunk[0].applicant_id >= 20:
            raise refused  # no application user left in the pool: not retried here
        return [result(op, 204) for op in chunk]

    sent: list[int] = []

    def plan() -> Iterator[list[Operation]]:
        for first in (1, 10, 20, 30, 40, 50):
            sent.append(first)
            yield creates(first, 2)

    failure = run_batches(send, plan(), workers=1, batch_attempts=4, recorder=recorder)
    assert failure is refused
    assert sorted(recorder.ledger.entries(INSTANCE)) == [1, 2, 10, 11]
    assert recorder.counts["resent_batches"] == 0
    assert sent[-1] < 50  # it stopped reading the plan


def test_a_plan_slice_that_fails_to_read_stops_the_loop(recorder: LoadRecorder) -> None:
    def plan() -> Iterator[list[Operation]]:
        yield creates(1, 2)
        raise ValueError("a later slice is refused")

    failure = run_batches(
        lambda chunk: [result(op, 204) for op in chunk], plan(), workers=2, batch_attempts=2, recorder=recorder
    )
    assert isinstance(failure, ValueError)
    assert sorted(recorder.ledger.entries(INSTANCE)) == [1, 2]  # what was on its way is recorded


def test_privacy_outcomes_gone_leads_count_as_done_and_failures_keep_the_reason() -> None:
    ops = [
        Operation(1, WITHDRAW, "L1", "", {"donotemail": True}, reason="consent withdrawn: flag"),
        Operation(2, ERASE, "L2", "", {}, method="DELETE", reason="right to be forgotten: delete"),
        Operation(3, ERASE, "L3", "", {"lastname": None}, reason="right to be forgotten: anonymise"),
        Operation(4, WITHDRAW, "L4", "", {"firstname": "Zoë Example"}, reason="consent withdrawn: flag"),
    ]
    results = [
        result(ops[0], 204),
        result(ops[1], 204),
        result(ops[2], 404, DynamicsNotFound("lead With Id = L3 Does Not Exist", status=404)),
        result(ops[3], 400, DynamicsError("Cannot convert the literal 'Zoë Example'", status=400, code="0x1")),
    ]
    updates, rows = outcomes(ops, results)
    by_id = {u.applicant_id: u for u in updates}
    assert (by_id[1].state, by_id[1].lead_id, by_id[1].clear_lead_id) == (LeadState.WITHDRAWN, "L1", False)
    assert by_id[1].reason == "consent withdrawn: flag"
    assert (by_id[2].state, by_id[2].lead_id, by_id[2].clear_lead_id) == (LeadState.ERASING, None, True)
    assert (by_id[3].state, by_id[3].clear_lead_id) == (LeadState.ERASING, True)
    assert by_id[3].reason == "right to be forgotten: anonymise (the lead no longer existed)"
    assert by_id[4].state is LeadState.FAILED and by_id[4].reason == "consent withdrawn: flag"
    assert "Zoë Example" not in (by_id[4].error or "") and "[redacted]" in (by_id[4].error or "")
    assert [r["outcome"] for r in rows] == ["withdrawn", "erased", "erased", "failed"]
    assert "Zoë Example" not in rows[3]["error"]
