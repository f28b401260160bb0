"""The load sends upserts as UpsertMultiple where preflight recorded the org supports it, and one invalid record in a
group costs only itself: the group goes again as ``$batch`` with continue-on-error (Dataverse's bulk messages are
all-or-nothing on standard tables). Real HTTP over TLS against the sandbox; the request log counts what happened."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from planned import planned_create

from d365.hooks.dynamics import DynamicsHook
from d365.operators.load_leads import PLAN_FILE, RESULTS_FILE, STATS_FILE, LoadLeadsOperator
from d365.pipeline.identity import lead_id_for
from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.plan import Operation
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

INSTANCE = "bulk.example"
N_LEADS = 60
BAD = 17  # its lastname is longer than the column's 50 characters: Dataverse refuses it with 0x80044331


def planned(aid: int, owner: str) -> Operation:
    # no e-mail: nothing but the name and key; BAD's lastname is longer than the column's 50 characters
    return planned_create(
        aid, owner, instance=INSTANCE, lastname=("x" * 60) if aid == BAD else f"Applicant-{aid}", emailaddress1=None
    )


def run_load(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    bulk: list[str],
) -> tuple[SandboxClient, dict[str, Any], Path, str]:
    sb, client = make_sandbox(applicants=5)
    for name, conn in airflow_connections(sb.info()).items():
        monkeypatch.setenv(name, json.dumps(conn))
    hook = DynamicsHook()
    owner = str(hook.find_systemuser(email="anna.virtanen@university.example")["systemuserid"])
    messages = sorted(hook.bulk_messages("lead"))  # what preflight asks the org
    hook.close()
    assert "UpsertMultiple" in messages  # the sandbox org offers bulk messages on lead
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    (folder / PLAN_FILE).write_text(
        "".join(json.dumps(planned(a, owner).to_json()) + "\n" for a in range(1, N_LEADS + 1))
    )
    target = {"connection_id": "dynamics365_default", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}
    if bulk:
        target["bulk_messages"] = bulk
    (folder / "preflight.json").write_text(json.dumps({"instance": INSTANCE, "target": target}))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    since = client.last_seq()
    LoadLeadsOperator(
        task_id="load", run_folder="file://" + str(folder), instance=INSTANCE, ledger_url=ledger_url, batch_size=30
    ).execute({"run_id": "bulk"})  # type: ignore[arg-type]
    log = [e for e in client.requests(server="dataverse") if e["seq"] > since]
    return client, {"log": log}, folder, ledger_url


def _writes(log: list[dict[str, Any]]) -> list[str]:
    return [e["path"].rsplit("/", 1)[-1] for e in log if e["method"] == "POST"]


@pytest.mark.slow
def test_one_invalid_record_costs_only_itself_and_every_valid_one_is_written_once(
    make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, seen, folder, ledger_url = run_load(make_sandbox, tmp_path, monkeypatch, bulk=["UpsertMultiple"])
    # two groups of 30: the one with the bad record failed as a whole and went again as $batch; the other did not
    posts = _writes(seen["log"])
    assert sorted(posts) == ["$batch", "Microsoft.Dynamics.CRM.UpsertMultiple", "Microsoft.Dynamics.CRM.UpsertMultiple"]
    failed_bulk = [e for e in seen["log"] if e["path"].endswith("UpsertMultiple") and e["status"] >= 400]
    assert len(failed_bulk) == 1 and failed_bulk[0]["error_code"] == "0x80044331"
    # every valid record written exactly once, the invalid one not at all
    leads = {lead["uni_applicantid"]: lead for lead in client.get("/dataverse/leads")}
    assert sorted(map(int, leads)) == [a for a in range(1, N_LEADS + 1) if a != BAD]
    assert all(leads[str(a)]["leadid"] == lead_id_for(INSTANCE, a) for a in range(1, N_LEADS + 1) if a != BAD)
    # the invalid one is reported with Dataverse's code and its applicant id; the ledger says so too
    rows = [json.loads(line) for line in (folder / RESULTS_FILE).read_text().splitlines()]
    bad_rows = [r for r in rows if r["applicant_id"] == BAD]
    assert [(r["outcome"], r["error_code"]) for r in bad_rows] == [("failed", "0x80044331")]
    assert sum(r["outcome"] == "created" for r in rows) == N_LEADS - 1
    ledger = Ledger(ledger_url)
    try:
        entries = ledger.entries(INSTANCE, list(range(1, N_LEADS + 1)))
    finally:
        ledger.dispose()
    assert entries[BAD].state is LeadState.FAILED and entries[BAD].last_error_code == "0x80044331"
    assert all(entries[a].state is LeadState.SENT for a in range(1, N_LEADS + 1) if a != BAD)
    stats = json.loads((folder / STATS_FILE).read_text())
    # written by UpsertMultiple: one group of 30; the other group fell back to $batch
    assert (stats["bulk_requests"], stats["bulk_operations"], stats["bulk_fallbacks"]) == (1, 30, 1)


@pytest.mark.slow
def test_without_bulk_messages_in_the_target_every_write_is_a_batch(
    make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, seen, _, _ = run_load(make_sandbox, tmp_path, monkeypatch, bulk=[])
    assert _writes(seen["log"]) == ["$batch", "$batch"]
