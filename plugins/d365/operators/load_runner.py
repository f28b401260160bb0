"""The load's batch loop: batches sent on a thread pool, each answer recorded from the main thread.

``run_batches`` keeps at most ``2 × workers`` batches queued, sends each through ``send`` (the operator's: the
credential pool's ``send``, one ``$batch`` per call today) and hands every answer to a ``LoadRecorder`` as it
completes. A batch that failed as a whole with a transient fault after the hook's own retries, or operations
answered 429/5xx or not executed, are sent again (``batch_attempts`` in all); any other failure stops the loop
after everything already on its way has been recorded, and is returned to the caller to raise.

``LoadRecorder`` turns answers into ledger rows and ``load/results.jsonl`` lines (``outcomes``). Only the main thread
touches the ledger (SQLite allows one writer) and the results file. Error texts are stored without the values that
were sent (``privacy.redact``).

``LoadProgress`` logs where the load stands every ``PROGRESS_SECONDS`` or ``PROGRESS_BATCHES`` batches, whichever
comes first, and at the end: leads done of the plan's writes (counted in one pass over the plan before the first
batch; those an earlier try wrote count as done), batches of about how many, leads per second, the throttling
waits so far, an ETA (``d365.pipeline.progress``). Counts only, never a lead's values.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO, Any

from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate
from d365.pipeline.plan import ADOPT, CREATE, ERASE, PRIVACY_WRITES, WITHDRAW, WRITES, Operation
from d365.pipeline.privacy import redact
from d365.pipeline.progress import Progress
from d365.pipeline.runfiles import PLAN_OPERATIONS

# An operation answered with one of these inside a $batch may succeed when sent again.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# what a privacy write becomes in the ledger and in load/results.jsonl
# (an erasure stays ``erasing`` until the commit has scrubbed the ledger row and the run files: then ``erased``)
PRIVACY_OUTCOMES = {WITHDRAW: ("withdrawn", LeadState.WITHDRAWN), ERASE: ("erased", LeadState.ERASING)}

Send = Callable[[list[Operation]], Sequence[Any]]

# the cadence of the load's progress lines: whichever comes first
PROGRESS_SECONDS = 30.0
PROGRESS_BATCHES = 25


def throttling_waits(snapshot: Mapping[str, Any]) -> str:
    """The throttles' waits so far (``DynamicsPool.throttle_snapshot``): Retry-After and pacing waits, their time,
    the 429 answers."""
    waits = int(snapshot.get("retry_after_waits", 0)) + int(snapshot.get("pacing_waits", 0))
    seconds = float(snapshot.get("retry_after_wait_seconds", 0.0)) + float(snapshot.get("pacing_wait_seconds", 0.0))
    text = f"throttling waits {waits:,} ({seconds:,.1f} s)"
    answered_429 = int(snapshot.get("throttled_429", 0))
    return text + (f", {answered_429:,} answered 429" if answered_429 else "")


class LoadProgress(Progress):
    """The load's progress: leads done of the plan's writes, batches, leads/s, throttling waits, ETA."""

    def __init__(
        self,
        total: int,
        batch_size: int,
        *,
        throttle: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] | None = None,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        super().__init__(
            log or logging.getLogger(__name__),
            what="load",
            unit="leads",
            step="batch",
            total=total,
            total_steps=math.ceil(total / max(1, batch_size)),
            every_seconds=PROGRESS_SECONDS,
            every_steps=PROGRESS_BATCHES,
            detail=(lambda: throttling_waits(throttle())) if throttle is not None else None,
            clock=clock or time.monotonic,
        )
        self.batch_size = max(1, batch_size)

    @classmethod
    def for_plan(cls, folder: Any, batch_size: int, pool: Any) -> LoadProgress:
        """The total from one pass over the run folder's plan (its write rows), the waits from the pool's throttles."""
        total = sum(row.get("action") in WRITES for row in folder.read_jsonl(PLAN_OPERATIONS))
        return cls(total, batch_size, throttle=pool.throttle_snapshot)

    def recorded(self, operations: int, counts: Mapping[str, int]) -> None:
        """One batch recorded; the writes an earlier try did (``counts["skipped"]``, known as the plan streams)."""
        self.done_before = int(counts.get("skipped", 0))
        left = max(0, (self.total or 0) - self.done - operations)
        self.total_steps = self.steps + 1 + math.ceil(left / self.batch_size)  # the batches done and those to come
        self.advance(1, operations)


class LoadRecorder:
    """Records answered batches: the ledger (versioned by the run's lock generation) and the results file.

    :param after_batch: called after each recorded batch (the operator renews the sync lock there)
    :param progress: the load's progress lines; without it, one line per batch
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
        progress: LoadProgress | None = None,
    ) -> None:
        self.ledger = ledger
        self.instance = instance
        self.results = results
        self.run_id = run_id
        self.version = version
        self.counts = counts
        self.log = log
        self.after_batch = after_batch
        self.progress = progress

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
        # with progress lines, a batch has its own line only when something in it failed
        level = logging.INFO if self.progress is None or failed else logging.DEBUG
        self.log.log(level, "batch %d: %d operations, %d failed", self.counts["batches"], len(chunk), failed)
        if self.progress is not None:
            self.progress.recorded(len(chunk), self.counts)
        self.after_batch()

    def patience(self) -> float | None:
        """How long the loop waits for an answer before ``tick`` (None: as long as it takes)."""
        return self.progress.every_seconds if self.progress is not None else None

    def tick(self) -> None:
        """No batch answered for a while (throttling): the progress line still comes when due."""
        if self.progress is not None:
            self.progress.advance(0, 0)

    def finish(self) -> None:
        """The load's last progress line."""
        if self.progress is not None:
            self.progress.done_before = int(self.counts.get("skipped", 0))  # the whole plan is read by now
            self.progress.finish()


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
            while True:
                done, _ = wait(list(running), timeout=recorder.patience() if block else 0, return_when=FIRST_COMPLETED)
                if done or not block:
                    break
                recorder.tick()
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
    recorder.finish()
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
