"""LoadLeadsOperator: planned requests are sent as planned, unfinished ones refused (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from d365.hooks.dynamics_batch import build_batch
from d365.operators.load_leads import LoadLeadsOperator, PlanRefused, check_request
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import ADOPT, CREATE, ERASE, UPDATE, WITHDRAW, Operation, final_requests


def test_the_load_sends_each_request_as_planned() -> None:
    """Method, URL, headers and body go to the wire type unchanged: the load builds nothing of its own."""
    patch = Operation(1, WITHDRAW, "L1", "", {"donotemail": True}, reason="consent withdrawn: flag")
    delete = Operation(2, ERASE, "L2", "", {}, method="DELETE", reason="right to be forgotten: delete")
    create = Operation(3, CREATE, "L3", "h", {"lastname": "X"})
    update = Operation(4, UPDATE, "L4", "h", {"lastname": "Y"})
    planned = final_requests(
        [patch, delete, create, update], entity_set="uni_leads", owners=OwnerIds("OWNER"), owner_rules={}
    )
    p, d, c, u = planned
    assert (p.method, p.url, p.body, p.headers) == ("PATCH", "uni_leads(L1)", {"donotemail": True}, {"If-Match": "*"})
    assert (d.method, d.url, d.body, d.headers) == ("DELETE", "uni_leads(L2)", None, {})
    assert (c.method, c.url) == ("PATCH", "uni_leads(L3)?$select=leadid")
    assert c.body == {"lastname": "X", "ownerid@odata.bind": "/systemusers(OWNER)"}
    assert c.headers == {"Prefer": "return=representation"}
    assert u.body == {"lastname": "Y"} and u.headers == {"Prefer": "return=representation"}
    assert [op.record for op in planned] == ["1", "2", "3", "4"]
    # the planned operations are what the $batch encoder reads: each part is its request, nothing added or lost
    _, body = build_batch(planned)
    parts = body.decode("utf-8").split("--batch_")[1:-1]
    assert len(parts) == 4
    for op, part in zip(planned, parts, strict=True):
        head, _, payload = part.partition("HTTP/1.1\r\n")
        assert f"{op.method} /api/data/v9.2/{op.url} " in head
        for name, value in op.headers.items():
            assert f"{name}: {value}\r\n" in payload
        sent = payload.split("\r\n\r\n", 1)[1].strip()
        assert (json.loads(sent) if sent else None) == op.body


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (Operation(3, CREATE, "L3", "h", {"lastname": "X"}, url="leads(L3)?$select=leadid"), "without an owner"),
        (
            Operation(4, UPDATE, "L4", "h", {"ownerid@odata.bind": "/systemusers(O)"}, url="leads(L4)?$select=leadid"),
            "only a create sets the owner",
        ),
        (Operation(5, UPDATE, "L5", "h", {"lastname": "Y"}), "addresses no lead"),
        (Operation(6, UPDATE, "L6", "h", {"lastname": "Y"}, url="uni_leads(L6)"), "addresses no lead"),
        (Operation(7, UPDATE, "L7", "h", {"lastname": "Y"}, url="leads(L8)"), "addresses no lead"),
        (Operation(8, UPDATE, "L8", "h", {}, method="POST", url="leads(L8)"), "method 'POST'"),
    ],
)
def test_a_write_the_plan_did_not_finish_is_refused(op: Operation, message: str) -> None:
    with pytest.raises(PlanRefused, match=message) as info:
        check_request(op, "leads")
    assert f"applicant {op.applicant_id} ({op.action})" in str(info.value)


def test_finished_requests_pass_the_check() -> None:
    ops = [
        Operation(1, CREATE, "L1", "h", {"lastname": "X"}),
        Operation(2, ADOPT, "L2", "h", {"lastname": "Y"}, adopted=True),
        Operation(3, ERASE, "L3", "", {}, method="DELETE"),
        Operation(4, WITHDRAW, "L4", "", {"donotemail": True}),
    ]
    for op in final_requests(ops, entity_set="leads", owners=OwnerIds("O"), owner_rules={}):
        check_request(op, "leads")


@pytest.mark.parametrize(
    ("plan_rows", "why"),
    [
        ([], "the plan has no writes (every applicant unchanged, held back or not sendable)"),
        ([{"applicant_id": 1, "action": "unchanged", "lead_id": "L1", "payload_hash": "h"}], "the plan has no writes"),
    ],
)
def test_a_load_with_nothing_to_send_says_why_and_sends_nothing(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    plan_rows: list[Any],
    why: str,
) -> None:
    import logging

    from d365.operators.load_leads import PLAN_FILE, STATS_FILE

    # a connection nobody can reach: nothing to send means no request at all, not even a token
    conn = {"conn_type": "dynamics365", "host": "https://org.invalid.example", "login": "c", "password": "s"}
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    (folder / PLAN_FILE).write_text("".join(json.dumps(r) + "\n" for r in plan_rows))
    target = {"connection_id": "dynamics365_default", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}
    (folder / "preflight.json").write_text(json.dumps({"instance": "x", "target": target}))
    caplog.set_level(logging.INFO)
    op = LoadLeadsOperator(
        task_id="load", run_folder="file://" + str(folder), instance="x", ledger_url=f"sqlite:///{tmp_path / 'l.db'}"
    )
    stats = op.execute({"run_id": "r"})  # type: ignore[arg-type]
    # the task logger (structlog) writes to the console; the stdlib records caplog sees are checked too
    printed = capfd.readouterr()
    text = printed.out + printed.err + "\n".join(r.getMessage() for r in caplog.records)
    said = [line for line in text.splitlines() if "load: nothing to send:" in line]
    assert len(said) == 1 and f"load: nothing to send: {why}" in said[0]
    assert stats["writes"] == 0 and stats["batches"] == 0 and stats.get("requests", 0) == 0
    assert json.loads((folder / STATS_FILE).read_text())["writes"] == 0
