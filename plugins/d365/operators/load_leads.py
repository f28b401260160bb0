"""Write the planned leads to Dynamics 365: ``$batch`` upserts by deterministic id, ledger after each batch.

Task semantics only: the plan comes from the run folder, the hook owns auth, wire format and retries.
The plan holds final requests (``plan.final_requests``: method, URL, headers, body, a create's owner bind):
this operator sends each as planned, retries and records. It decides nothing about a lead (no owner, no
fallback, no body of its own); it only refuses a planned request that is not final: a write addressed outside
the run's entity set, a create without ``ownerid@odata.bind``, or an owner bind on anything but a create
(``check_request``, before the request's slice of the plan is sent).
The target (connection id and entity set) is the one preflight resolved (``d365.pipeline.target``): the DAG
passes it from preflight's XCom, and it must agree with ``preflight.json`` when the run folder has one; with
neither the load fails before any request. There is no default connection or entity set to fall back on.
A retry of this task (or a re-run of the DAG) skips operations the ledger already records as done with
the same payload, and every write is an upsert by primary key, so nothing is written twice and no lead
is created twice.

Consent withdrawals and erasures (``privacy``) run in the same batches: a ``PATCH`` with ``If-Match: *``
(update only: a lead that is gone is not re-created) or a ``DELETE``. Either answered 404 means the lead
no longer exists, which counts as done. They end ``withdrawn`` / ``erasing`` in the ledger (``erased`` once the
commit has scrubbed the run files and the row), the lead id forgotten when the lead is gone. Error texts are
stored without the values that were sent (``privacy.redact``).

Application users: the load writes through a credential pool (``d365.hooks.dynamics_pool``): the target's
connection and the pool preflight checked (``LeadTarget.pool``; without a preflight record, the connection's own
``pool`` extra). Service-protection limits are per user, so each member has its own hook, token and throttle
(``d365.hooks.throttle``: Retry-After pause for all of that user's requests, AIMD concurrency, pacing against the
window's request and execution-time budgets) and its own ``x-ms-dop-hint``. A member that fails authentication
mid-load (a revoked secret) is taken out for the run and its batch goes to another; ``load/stats.json`` (``pool``)
and the report name it. Creates carry their owner bind from the plan, so whichever user sends a create, the lead
is owned per the owner rules.

Throughput: batches run on a thread pool of as many workers as the pool's members admit together (each
``min(x-ms-dop-hint, max_workers)``). The batch loop and the recording of answers are ``load_runner``'s: only the
main thread touches the ledger (SQLite allows one writer) and the results file. The plan is streamed: it is read in
slices, each slice checked against the ledger, and at most ``2 × workers`` batches are queued at any time, so
memory stays flat whatever the plan's size. A batch that failed as a whole with a transient fault after the
hook's own retries, or operations answered 429/5xx or not executed, are sent again (``batch_attempts`` in
all); a batch that still fails stops the load (the batches already answered are in the ledger, so the task's
retry only sends the rest). ``load/stats.json`` holds the hooks' counters and the throttles' (429s, waits,
concurrency changes, the budgets used), per member under ``pool``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from d365.operators.load_runner import PRIVACY_OUTCOMES, LoadProgress, LoadRecorder, run_batches
from d365.pipeline import runfiles
from d365.pipeline.ledger import LeadState, Ledger, default_ledger_url
from d365.pipeline.plan import CREATE, OWNER_BIND, PRIVACY_WRITES, WRITES, Operation
from d365.pipeline.target import LeadTarget, TargetMissing
from d365.runtime.runfolder import RunFolder

# run files (d365.pipeline.runfiles): preflight's ``target`` is where preflight looked; the run's sync lock
# (``d365.tasks.lock.lock_step``) has the generation that versions the ledger writes
PLAN_FILE = runfiles.PLAN_OPERATIONS
RESULTS_FILE = runfiles.LOAD_RESULTS
STATS_FILE = runfiles.LOAD_STATS
PREFLIGHT_FILE = runfiles.PREFLIGHT
LOCK_FILE = runfiles.LOCK
LOCK_RENEW_SECONDS = 30.0  # the lock is renewed (and checked) at most this often while batches complete
# Plan operations checked against the ledger at a time (bounds memory while streaming the plan).
PLAN_SLICE = 5000
SENDABLE_METHODS = frozenset({"PATCH", "DELETE"})


class PlanRefused(AirflowFailException):
    """A planned write is not a final request: the load stops rather than completing it (no retries)."""


def check_request(op: Operation, entity_set: str) -> None:
    """Refuse a write the plan did not finish; the message names the applicant id and the action only."""
    where = f"load: applicant {op.applicant_id} ({op.action})"
    key = f"{entity_set}({op.lead_id})"
    if not op.lead_id or not op.url or (op.url != key and not op.url.startswith(key + "?")):
        raise PlanRefused(f"{where}: the plan addresses no lead in entity set {entity_set!r}; nothing of it is sent")
    if op.method not in SENDABLE_METHODS:
        raise PlanRefused(f"{where}: method {op.method!r} is not a planned write")
    if op.action == CREATE and op.owner_id is None:
        raise PlanRefused(f"{where}: a create without an owner bind; the plan gives every create its owner")
    if op.action != CREATE and OWNER_BIND in (op.body or {}):
        raise PlanRefused(f"{where}: only a create sets the owner; updates keep the lead's owner")


class LoadLeadsOperator(BaseOperator):
    """Upsert the run's planned leads; apply the planned consent withdrawals and erasures.

    :param run_folder: URL of the run folder holding ``plan/operations.jsonl`` (templated)
    :param instance: the DreamApply instance key the ledger rows belong to (templated)
    :param ledger_url: SQLAlchemy URL of the ledger (templated; default ``$D365_SYNC_LEDGER_URL`` or SQLite)
    :param dynamics365_conn_id: Airflow connection of the Dynamics 365 organization (templated; default: the
        ``target`` of the run's ``preflight.json``)
    :param entity_set: Web API entity set of the lead table (templated; default: as ``dynamics365_conn_id``)
    :param batch_size: operations per ``$batch`` request (each runs on its own: continue-on-error)
    :param max_workers: most parallel requests per application user; each user's is min(this, its ``x-ms-dop-hint``)
    :param throttle: throttle settings over the connection's extras, e.g. ``{"max_execution_ms": 1_200_000,
        "window_seconds": 300, "max_requests": 6000, "safety_margin": 0.95}`` (``d365.hooks.throttle``)
    :param batch_attempts: times a batch (or its transiently failed operations) is sent before giving up
    :param require_lock: fail unless the run holds its instance's sync lock (``lock.json``; the DAG sets it)
    """

    template_fields: Sequence[str] = ("run_folder", "instance", "ledger_url", "dynamics365_conn_id", "entity_set")

    def __init__(
        self,
        *,
        run_folder: str,
        instance: str,
        ledger_url: str | None = None,
        dynamics365_conn_id: str | None = None,
        entity_set: str | None = None,
        batch_size: int = 100,
        max_workers: int = 16,
        throttle: dict[str, Any] | None = None,
        batch_attempts: int = 4,
        require_lock: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_folder = run_folder
        self.instance = instance
        self.ledger_url = ledger_url
        self.dynamics365_conn_id = dynamics365_conn_id
        self.entity_set = entity_set
        self.batch_size = batch_size
        self.max_workers = max(1, int(max_workers))
        self.throttle = dict(throttle or {})
        self.batch_attempts = max(1, int(batch_attempts))
        self.require_lock = require_lock
        self._lock: dict[str, Any] | None = None
        self._lock_checked = 0.0
        self.pool_members: tuple[str, ...] | None = None  # preflight's LeadTarget.pool; None: the connection's extra
        self.target: LeadTarget | None = None  # preflight's record: the table's logical name, its bulk messages

    def get_hook(self) -> Any:
        """The hook of the target's connection (the pool's first member)."""
        if not self.dynamics365_conn_id:
            raise AirflowFailException("load: no Dynamics 365 connection resolved (preflight's target)")
        return self.member_hook(self.dynamics365_conn_id)

    def member_hook(self, conn_id: str) -> Any:
        """The hook of one application user, with the load's throttle settings (limits are per user)."""
        from d365.hooks.dynamics import DynamicsHook

        return DynamicsHook(conn_id, throttle={**self.throttle, "max_concurrency": self.max_workers})

    def get_pool(self) -> Any:
        """The credential pool: the target's connection, then the pool preflight checked (else the connection's
        ``pool`` extra). A member that cannot share the load (another org) fails the task before any request."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        from d365.hooks.dynamics_pool import DynamicsPool
        from d365.hooks.errors import ApiError

        primary = self.get_hook()
        try:
            names = primary.settings.pool if self.pool_members is None else self.pool_members
            return DynamicsPool([primary, *(self.member_hook(name) for name in names)])
        except (ApiError, AirflowNotFoundException) as exc:  # a member that cannot share the load, or is missing
            primary.close()
            raise AirflowFailException(f"load: the credential pool of {primary.dynamics365_conn_id!r}: {exc}") from None

    def write(self, hook: Any, operations: Sequence[Operation]) -> list[Any]:
        """How one application user sends a slice of planned requests, as they are: the upserts as one
        ``UpsertMultiple`` where preflight found the org supports it (``dynamics_bulk.write_operations``: a group
        that fails as a whole goes again as ``$batch`` with continue-on-error, so one bad record costs only
        itself), everything else as one ``$batch`` with continue-on-error (``dynamics_pool.write_batch``). One
        result per operation, in order; the pool calls it with the member it chose."""
        from d365.hooks.dynamics_bulk import MAX_GROUP_SIZE, write_operations
        from d365.hooks.dynamics_pool import write_batch

        target = self.target
        if target is None or not target.bulk_messages:
            return write_batch(hook, operations)
        group = max(1, min(len(operations), MAX_GROUP_SIZE))
        return write_operations(
            hook, operations, entity=target.entity, messages=frozenset(target.bulk_messages), group_size=group
        )

    def _resolve_target(self, folder: RunFolder) -> None:
        """Settle the connection and entity set before any request: preflight's, never a default.

        Given ones (the DAG passes preflight's XCom) must equal ``preflight.json``'s ``target`` when the run
        folder has one; missing ones are taken from it; with neither, the load fails."""
        pre = folder.read_json(PREFLIGHT_FILE) or {}
        recorded: LeadTarget | None = None
        if pre.get("target") is not None:
            try:
                recorded = LeadTarget.from_json(pre["target"])
            except TargetMissing as exc:
                raise AirflowFailException(f"load: {exc}") from None
        given = {"connection": self.dynamics365_conn_id or None, "entity set": self.entity_set or None}
        if recorded is not None:
            found = {"connection": recorded.connection_id, "entity set": recorded.entity_set}
            differ = [k for k, v in given.items() if v is not None and v != found[k]]
            if differ:
                shown = "; ".join(f"{k} {given[k]!r} but preflight used {found[k]!r}" for k in differ)
                raise AirflowFailException(f"load: the target differs from preflight's ({shown}); nothing sent")
            given = found
            self.pool_members = recorded.pool  # the application users preflight checked, exactly
            self.target = recorded
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise AirflowFailException(
                f"load: no Dynamics 365 {' or '.join(missing)} (preflight records the target; no default is used)"
            )
        self.dynamics365_conn_id, self.entity_set = given["connection"], given["entity set"]

    def execute(self, context: Context) -> dict[str, Any]:
        folder = RunFolder(self.run_folder)
        run_id = context.get("run_id", None)
        ledger = Ledger(self.ledger_url or default_ledger_url())
        pool: Any = None
        counts = {"writes": 0, "skipped": 0, "batches": 0, "resent_batches": 0, "resent_operations": 0}
        started = time.monotonic()
        try:
            self._lock = folder.read_json(LOCK_FILE)
            if self._lock is None and self.require_lock:
                raise AirflowFailException("load: this run did not take the sync lock (the lock task); stopping")
            self._hold_lock(ledger, run_id, force=True)
            self._resolve_target(folder)
            batches = self._pending_batches(ledger, folder, counts)
            first = next(batches, None)  # the plan's first slice is checked before any hook or request exists
            pool = self.get_pool()
            workers = 0
            failure: BaseException | None = None
            if first is not None:  # nothing to write: no request at all
                pool.whoami()  # proves every user's token, reads each x-ms-dop-hint (caps each user's throttle)
                workers = max(1, int(pool.cap))
                self.log.info(
                    "loading with %d workers over %d application users (x-ms-dop-hint %s, max %d per user)",
                    workers,
                    len(pool.active),
                    ", ".join(f"{conn} {hint}" for conn, hint in pool.dop_hints.items()),
                    self.max_workers,
                )
                with folder.file(RESULTS_FILE).open("a", encoding="utf-8") as results_fh:
                    recorder = LoadRecorder(
                        ledger=ledger,
                        instance=self.instance,
                        results=results_fh,
                        run_id=run_id,
                        version=int(self._lock["generation"]) if self._lock else None,
                        counts=counts,
                        log=self.log,
                        after_batch=lambda: self._hold_lock(ledger, run_id),
                        progress=LoadProgress.for_plan(folder, self.batch_size, pool),
                    )
                    failure = run_batches(
                        lambda chunk: pool.send(chunk, self.write),  # the planned requests, sent as they are
                        itertools.chain([first], batches),
                        workers=workers,
                        batch_attempts=self.batch_attempts,
                        recorder=recorder,
                    )
            if first is None:  # say why nothing was sent
                self.log.info(
                    "load: nothing to send: %s",
                    f"all {counts['writes']} planned writes were done by an earlier try"
                    if counts["skipped"]
                    else "the plan has no writes (every applicant unchanged, held back or not sendable)",
                )
            elif counts["skipped"]:
                self.log.info(
                    "%d of %d writes already done by an earlier try; skipped", counts["skipped"], counts["writes"]
                )
            stats: dict[str, Any] = dict(pool.stats)  # the members' counters; per member and who was removed: pool
            elapsed = time.monotonic() - started
            sent = counts["writes"] - counts["skipped"]
            stats.update(
                counts,
                workers=workers,
                batch_size=self.batch_size,
                elapsed_seconds=round(elapsed, 3),
                operations_per_second=round(sent / elapsed, 1) if elapsed > 0 else None,
                throttle=pool.throttle_snapshot(),
            )
            for removed in pool.removed:
                self.log.warning("load: %s", removed.describe())
        finally:
            ledger.dispose()
            if pool is not None:
                pool.close()
        folder.write_json(STATS_FILE, stats)
        if failure is not None:
            raise failure
        return stats

    def _pending_batches(self, ledger: Ledger, folder: RunFolder, counts: dict[str, int]) -> Iterator[list[Operation]]:
        """Batches of the plan's writes not done by an earlier try, streamed slice by slice from the plan file."""
        buffer: list[Operation] = []

        def flush(ops: list[Operation]) -> Iterator[list[Operation]]:
            pending = self._not_done_yet(ledger, ops)
            counts["skipped"] += len(ops) - len(pending)
            for start in range(0, len(pending), self.batch_size):
                yield pending[start : start + self.batch_size]

        for row in folder.read_jsonl(PLAN_FILE):
            if row.get("action") not in WRITES:
                continue
            op = Operation.from_json(row)
            check_request(op, str(self.entity_set))
            buffer.append(op)
            counts["writes"] += 1
            if len(buffer) >= PLAN_SLICE:
                yield from flush(buffer)
                buffer = []
        if buffer:
            yield from flush(buffer)

    def _hold_lock(self, ledger: Ledger, run_id: str | None, *, force: bool = False) -> None:
        """Renew the run's sync lock (at most every ``LOCK_RENEW_SECONDS``); stop the load if it was lost."""
        if self._lock is None or run_id is None:
            return
        if not force and time.monotonic() - self._lock_checked < LOCK_RENEW_SECONDS:
            return
        from d365.pipeline.lock import LockLost, hold

        lock = self._lock
        try:
            hold(ledger, lock["instance"], run_id, generation=lock["generation"], ttl=lock["ttl_seconds"], step="load")
        except LockLost as exc:
            raise AirflowFailException(str(exc)) from None
        self._lock_checked = time.monotonic()

    def _not_done_yet(self, ledger: Ledger, writes: list[Operation]) -> list[Operation]:
        entries = ledger.entries(self.instance, [op.applicant_id for op in writes])
        pending = []
        for op in writes:
            e = entries.get(op.applicant_id)
            if op.action in PRIVACY_WRITES:
                if e is not None and e.state is PRIVACY_OUTCOMES[op.action][1]:
                    continue
            elif (
                e is not None
                and e.state is LeadState.SENT
                and e.payload_hash == op.payload_hash
                and e.lead_id == op.lead_id
            ):
                continue
            pending.append(op)
        return pending
