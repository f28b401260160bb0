"""Write the planned leads to Dynamics 365: ``$batch`` upserts by deterministic id, ledger after each batch.

Task semantics only: the plan comes from the run folder, the hook owns auth, wire format and retries.
A retry of this task (or a re-run of the DAG) skips operations the ledger already records as done with
the same payload, and every write is an upsert by primary key, so nothing is written twice and no lead
is created twice.

Consent withdrawals and erasures (``privacy``) run in the same batches: a ``PATCH`` with ``If-Match: *``
(update only: a lead that is gone is not re-created) or a ``DELETE``. Either answered 404 means the lead
no longer exists, which counts as done. They end ``withdrawn`` / ``erased`` in the ledger, the lead id
forgotten when the lead is gone. Error texts are stored without the values that were sent
(``privacy.redact``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate, default_ledger_url
from d365.pipeline.plan import ADOPT, CREATE, ERASE, PRIVACY_WRITES, WITHDRAW, WRITES, Operation
from d365.pipeline.privacy import redact
from d365.pipeline.runfolder import RunFolder

PLAN_FILE = "plan/operations.jsonl"
PLAN_META = "plan/meta.json"
RESULTS_FILE = "load/results.jsonl"
STATS_FILE = "load/stats.json"


# what a privacy write becomes in the ledger and in load/results.jsonl
PRIVACY_OUTCOMES = {WITHDRAW: ("withdrawn", LeadState.WITHDRAWN), ERASE: ("erased", LeadState.ERASED)}


class LoadLeadsOperator(BaseOperator):
    """Upsert the run's planned leads; apply the planned consent withdrawals and erasures.

    :param run_folder: URL of the run folder holding ``plan/operations.jsonl`` (templated)
    :param instance: the DreamApply instance key the ledger rows belong to (templated)
    :param ledger_url: SQLAlchemy URL of the ledger (templated; default ``$D365_SYNC_LEDGER_URL`` or SQLite)
    :param dynamics365_conn_id: Airflow connection of the Dynamics 365 organization
    :param entity_set: Web API entity set of the lead table
    :param batch_size: operations per ``$batch`` request (each runs on its own: continue-on-error)
    """

    template_fields: Sequence[str] = ("run_folder", "instance", "ledger_url")

    def __init__(
        self,
        *,
        run_folder: str,
        instance: str,
        ledger_url: str | None = None,
        dynamics365_conn_id: str = "dynamics365_default",
        entity_set: str = "leads",
        batch_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_folder = run_folder
        self.instance = instance
        self.ledger_url = ledger_url
        self.dynamics365_conn_id = dynamics365_conn_id
        self.entity_set = entity_set
        self.batch_size = batch_size

    def execute(self, context: Context) -> dict[str, Any]:
        from d365.hooks.dynamics import BatchOperation, DynamicsHook

        folder = RunFolder(self.run_folder)
        meta = folder.read_json(PLAN_META, default={}) or {}
        owner_id = meta.get("owner_id")
        run_id = context.get("run_id", None)
        writes = [op for op in map(Operation.from_json, folder.read_jsonl(PLAN_FILE)) if op.action in WRITES]
        ledger = Ledger(self.ledger_url or default_ledger_url())
        try:
            pending = self._not_done_yet(ledger, writes)
            if len(pending) < len(writes):
                self.log.info(
                    "%d of %d writes already done by an earlier try; skipping them",
                    len(writes) - len(pending),
                    len(writes),
                )
            hook = DynamicsHook(self.dynamics365_conn_id)
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start : start + self.batch_size]
                batch = [self._batch_operation(BatchOperation, op, owner_id) for op in chunk]
                results = hook.execute_batch(batch, continue_on_error=True, idempotent=True)
                updates, rows = self._outcomes(chunk, results)
                ledger.record(self.instance, updates, run_id=run_id)
                folder.append_jsonl(RESULTS_FILE, rows)
                self.log.info(
                    "batch %d: %d operations, %d failed",
                    start // self.batch_size + 1,
                    len(chunk),
                    sum(r["outcome"] == "failed" for r in rows),
                )
            stats = dict(hook.stats)
        finally:
            ledger.dispose()
        folder.write_json(STATS_FILE, stats)
        return stats

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

    def _batch_operation(self, factory: Any, op: Operation, owner_id: str | None) -> Any:
        if op.action in PRIVACY_WRITES:
            if op.method == "DELETE":
                return factory(method="DELETE", url=f"{self.entity_set}({op.lead_id})", record=str(op.applicant_id))
            return factory(
                method="PATCH",
                url=f"{self.entity_set}({op.lead_id})",
                body=dict(op.payload),
                headers={"If-Match": "*"},  # update only: never re-create a lead that is gone
                record=str(op.applicant_id),
            )
        body = dict(op.payload)
        if op.set_owner and owner_id:
            body["ownerid@odata.bind"] = f"/systemusers({owner_id})"
        return factory(
            method="PATCH",
            url=f"{self.entity_set}({op.lead_id})?$select=leadid",
            body=body,
            headers={"Prefer": "return=representation"},
            record=str(op.applicant_id),
        )

    @staticmethod
    def _outcomes(chunk: list[Operation], results: Sequence[Any]) -> tuple[list[LedgerUpdate], list[dict[str, Any]]]:
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
            message = redact(message, op.payload.values()) or message
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
