"""The load's batch loop: batches sent on a thread pool, each answer recorded from the main thread.

``run_batches`` keeps at most ``2 × workers`` batches queued, sends each through ``send`` (the operator's: the
credential pool's ``send``, one ``$batch`` per call today) and hands every answer to a ``LoadRecorder`` as it
completes. A batch that failed as a whole with a transient fault after the hook's own retries, or operations
answered 429/5xx or not executed, are sent again (``batch_attempts`` in all); any other failure stops the loop
after everything already on its way has been recorded, and is returned to the caller to raise.

``LoadRecorder`` turns answers into ledger rows and ``load/results.jsonl`` lines (``outcomes``). Only the main thread
touches the ledger (SQLite allows one writer) and the results file. Error texts are stored without the values that
were sent (``privacy.redact``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO, Any

from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate
from d365.pipeline.plan import ADOPT, CREATE, ERASE, PRIVACY_WRITES, WITHDRAW, Operation
from d365.pipeline.privacy import redact

# An operation answered with one of these inside a $batch may succeed when sent again.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# what a privacy write becomes in the ledger and in load/results.jsonl
# (an erasure stays ``erasing`` until the commit has scrubbed the ledger row and the run files: then ``erased``)
PRIVACY_OUTCOMES = {WITHDRAW: ("withdrawn", LeadState.WITHDRAWN), ERASE: ("erased", LeadState.ERASING)}

Send = Callable[[list[Operation]], Sequence[Any]]


class LoadRecorder:
    """Records answered batches: the ledger (versioned by the run's lock generation) and the results file.

    :param after_batch: called after each recorded batch (the operator renews the sync lock there)
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        instance: str,
        results: IO[str],
        run_id: str | None,
        version: int | None,
        counts: dict[str, int],
        log: logging.Logger | logging.LoggerAdapter[Any],
        after_batch: Callable[[], None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self.instance = instance
        self.results = results
        self.run_id = run_id
        self.version = version
        self.counts = counts
        self.log = log
        self.after_batch = after_batch

    def record(self, chunk: list[Operation], results: Sequence[Any]) -> None:
        if not chunk:
            return
        updates, rows = outcomes(chunk, results)
        self.ledger.record(self.instance, updates, run_id=self.run_id, version=self.version)
        for row in rows:
            self.results.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str))
            self.results.write("\n")
        self.results.flush()
        self.counts["batches"] += 1
        failed = sum(r["outcome"] == "failed" for r in rows)
        self.log.info("batch %d: %d operations, %d failed", self.counts["batches"], len(chunk), failed)
        self.after_batch()


def run_batches(
    send: Send,
    batches: Iterator[list[Operation]],
    *,
    workers: int,
    batch_attempts: int,
    recorder: LoadRecorder,
) -> BaseException | None:
    """Send batches on ``workers`` threads; record each answer from this (the main) thread.

    Returns the error that stopped the load, if any (after recording everything already answered). An error
    raised while the next batch is read from ``batches`` (a later slice of the plan refused) stops it the same way.
    """
    from d365.hooks.errors import ApiError

    counts, log = recorder.counts, recorder.log
    running: dict[Future[Sequence[Any]], tuple[list[Operation], int]] = {}
    retry: list[tuple[list[Operation], int]] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d365-load") as pool:

        def submit(chunk: list[Operation], attempt: int) -> None:
            running[pool.submit(send, chunk)] = (chunk, attempt)

        def collect(block: bool) -> None:
            nonlocal failure
            done, _ = wait(list(running), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                chunk, attempt = running.pop(future)
                try:
                    results = future.result()
                except Exception as exc:
                    # An authentication failure was the credential pool's to handle (it moves the batch to another
                    # application user); what reaches here is transient (retried) or final.
                    if isinstance(exc, ApiError) and exc.retryable and attempt < batch_attempts and failure is None:
                        log.warning("batch of %d failed (%s); sending it again", len(chunk), exc)
                        counts["resent_batches"] += 1
                        retry.append((chunk, attempt + 1))
                    elif failure is None:
                        failure = exc
                    continue
                again = [
                    i
                    for i, res in enumerate(results)
                    if (not res.executed or res.status in TRANSIENT_STATUSES) and attempt < batch_attempts
                ]
                if again:
                    counts["resent_operations"] += len(again)
                    retry.append(([chunk[i] for i in again], attempt + 1))
                    keep = set(range(len(chunk))) - set(again)
                    chunk = [op for i, op in enumerate(chunk) if i in keep]
                    results = [res for i, res in enumerate(results) if i in keep]
                recorder.record(chunk, results)

        try:
            for chunk in batches:
                while len(running) >= 2 * workers:
                    collect(block=True)
                if failure is not None:
                    break
                while retry:
                    submit(*retry.pop())
                submit(chunk, 1)
                collect(block=False)
        except Exception as exc:  # reading the plan failed (a later slice refused): record what is running, then stop
            failure = failure or exc
        while running or (retry and failure is None):
            while retry and failure is None:
                submit(*retry.pop())
            if running:
                collect(block=True)
    return failure


def outcomes(chunk: list[Operation], results: Sequence[Any]) -> tuple[list[LedgerUpdate], list[dict[str, Any]]]:
    """Ledger updates and ``load/results.jsonl`` rows for one answered batch (operation and answer, in order)."""
    updates: list[LedgerUpdate] = []
    rows: list[dict[str, Any]] = []
    for op, res in zip(chunk, results, strict=True):
        if op.action in PRIVACY_WRITES and (
            res.status == 404 or (res.error is None and res.status is not None and 200 <= res.status < 300)
        ):
            outcome, state = PRIVACY_OUTCOMES[op.action]
            gone = op.method == "DELETE" or res.status == 404
            reason = op.reason or outcome
            if res.status == 404:
                reason += " (the lead no longer existed)"
            updates.append(
                LedgerUpdate(
                    op.applicant_id,
                    state,
                    lead_id=None if gone else op.lead_id,
                    reason=reason,
                    clear_lead_id=gone,
                )
            )
            rows.append(
                {
                    "applicant_id": op.applicant_id,
                    "lead_id": None if gone else op.lead_id,
                    "outcome": outcome,
                    "status": res.status,
                    "action": op.action,
                    "method": op.method,
                }
            )
            continue
        if res.error is None and res.status is not None and 200 <= res.status < 300:
            if op.action == ADOPT:
                outcome = "adopted"
            elif res.status == 201 or (res.status == 204 and op.action == CREATE):
                outcome = "created"
            else:
                outcome = "updated"
            updates.append(
                LedgerUpdate(
                    op.applicant_id,
                    LeadState.SENT,
                    lead_id=op.lead_id,
                    payload_hash=op.payload_hash,
                    adopted=op.adopted,
                    synced=True,
                )
            )
            rows.append(
                {"applicant_id": op.applicant_id, "lead_id": op.lead_id, "outcome": outcome, "status": res.status}
            )
            continue
        err = res.error
        code = getattr(err, "code", None) or (str(res.status) if res.status else "not_executed")
        message = getattr(err, "message", None) or "the operation was not executed"
        message = redact(message, (op.body or {}).values()) or message
        updates.append(
            LedgerUpdate(
                op.applicant_id,
                LeadState.FAILED,
                lead_id=op.lead_id,
                payload_hash=op.payload_hash or None,
                reason=op.reason,  # a failed withdrawal or erasure is planned again next run
                error_code=code,
                error=message[:500],
            )
        )
        rows.append(
            {
                "applicant_id": op.applicant_id,
                "lead_id": op.lead_id,
                "outcome": "failed",
                "status": res.status,
                "error_code": code,
                "error": message[:300],
            }
        )
    return updates, rows
