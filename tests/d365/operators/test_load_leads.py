"""LoadLeadsOperator: how withdrawals and erasures become requests and ledger outcomes (no network)."""

from __future__ import annotations

from d365.hooks.dynamics_batch import BatchOperation, BatchResult
from d365.hooks.errors import DynamicsError, DynamicsNotFound
from d365.operators.load_leads import LoadLeadsOperator
from d365.pipeline.ledger import LeadState
from d365.pipeline.plan import CREATE, ERASE, WITHDRAW, Operation


def operator() -> LoadLeadsOperator:
    return LoadLeadsOperator(
        task_id="load", run_folder="file:///tmp/x", instance="i", dynamics365_conn_id="crm", entity_set="leads"
    )


def result(op: Operation, status: int | None, error: Exception | None = None) -> BatchResult:
    return BatchResult(operation=BatchOperation("PATCH", "x"), status=status, error=error)  # type: ignore[arg-type]


def test_privacy_writes_never_create_and_carry_no_owner() -> None:
    load = operator()
    patch = Operation(1, WITHDRAW, "L1", "", {"donotemail": True}, reason="consent withdrawn: flag")
    delete = Operation(2, ERASE, "L2", "", {}, method="DELETE", reason="right to be forgotten: delete")
    create = Operation(3, CREATE, "L3", "h", {"lastname": "X"}, set_owner=True)
    p, d, c = (load._batch_operation(BatchOperation, op, "OWNER") for op in (patch, delete, create))
    assert (p.method, p.url, p.body, p.headers) == ("PATCH", "leads(L1)", {"donotemail": True}, {"If-Match": "*"})
    assert (d.method, d.url, d.body) == ("DELETE", "leads(L2)", None)
    assert c.body["ownerid@odata.bind"] == "/systemusers(OWNER)" and "If-Match" not in (c.headers or {})


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
    updates, rows = LoadLeadsOperator._outcomes(ops, results)
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
