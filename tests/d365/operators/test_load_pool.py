"""Must-show of the credential pool: a load of 300 leads over three application users, one of whose secret is revoked
mid-load after some of its batches were written. The load finishes on the other two, every lead is written exactly
once, the ledger is complete, ``load/stats.json`` and the report name the removed user, and the sandbox's request
log proves the revocation hit (Dataverse refused that user's token, Entra ID its secret).

The revocation is triggered from the operator's documented send path (``LoadLeadsOperator.write``, called by the pool
with the member it chose): right after the third batch user 2 wrote, the test revokes user 2's secret in the sandbox,
so "mid-load, after some of its batches succeeded" holds on every run, whatever the machine's speed. Everything else
(the failover, the sandbox's refusals, the recording) is the product's code over real TLS.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from planned import planned_create

from d365.hooks.dynamics import DynamicsHook
from d365.operators.load_leads import PLAN_FILE, RESULTS_FILE, STATS_FILE, LoadLeadsOperator
from d365.pipeline.identity import lead_id_for
from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.plan import Operation
from d365.pipeline.report import build_report, summary_text
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

N_LEADS = 300
INSTANCE = "pool.example"
OWNER_EMAIL = "anna.virtanen@university.example"
REVOKED = "dynamics365_user2"
BATCH = "/api/data/v9.2/$batch"


class RevokingLoad(LoadLeadsOperator):
    """Revokes user 2's secret in the sandbox right after user 2 has written ``after`` batches."""

    client: SandboxClient
    after = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: Counter[str] = Counter()
        self.revoked_at_seq: int | None = None
        self.revoked_at: float | None = None  # the sandbox's clock: tokens issued before it are refused
        self._guard = threading.Lock()

    def write(self, hook: DynamicsHook, operations: Sequence[Operation]) -> list[Any]:
        results = super().write(hook, operations)
        with self._guard:
            self.written[hook.dynamics365_conn_id] += 1
            if hook.dynamics365_conn_id == REVOKED and self.written[REVOKED] == self.after:
                self.revoked_at_seq = self.client.last_seq()
                self.revoked_at = self.client.revoke_app_secret(hook.settings.client_id)["revoked_before"]
        return results


def planned(aid: int, owner: str) -> Operation:
    return planned_create(
        aid,
        owner,
        instance=INSTANCE,
        firstname=f"Pool {aid}",
        lastname=f"Applicant-{aid}",
        emailaddress1=f"pool{aid}@example.org",
    )


@pytest.fixture
def pool_load(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Sandbox, SandboxClient, str, str, str]:
    # some server time per operation, so batches overlap and every user carries work
    sb, client = make_sandbox(applicants=10, extra_app_users=2, request_latency_ms=10.0, operation_ms=1.0)
    for name, conn in airflow_connections(sb.info(), dynamics_pool=True).items():
        monkeypatch.setenv(name, json.dumps(conn))
    hook = DynamicsHook()
    owner = str(hook.find_systemuser(email=OWNER_EMAIL)["systemuserid"])  # as preflight resolves it
    hook.close()
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    with (folder / PLAN_FILE).open("w", encoding="utf-8") as fh:
        for aid in range(1, N_LEADS + 1):
            fh.write(json.dumps(planned(aid, owner).to_json()) + "\n")
    # the target as preflight records it, with the pool it checked
    target = {
        "connection_id": "dynamics365_default",
        "entity": "lead",
        "entity_set": "leads",
        "primary_id": "leadid",
        "pool": ["dynamics365_user2", "dynamics365_user3"],
    }
    (folder / "preflight.json").write_text(json.dumps({"instance": INSTANCE, "target": target}))
    return sb, client, "file://" + str(folder), f"sqlite:///{tmp_path / 'ledger.db'}", owner


@pytest.mark.slow  # more than 3 s on a busy machine: make test runs it, make test-fast does not
def test_a_user_revoked_mid_load_leaves_the_pool_and_the_load_finishes_on_the_others(
    pool_load: tuple[Sandbox, SandboxClient, str, str, str],
) -> None:
    sb, client, run_folder, ledger_url, owner = pool_load
    info = sb.info()["entra"]
    clients = {"dynamics365_default": info["client_id"]}
    clients.update({f"dynamics365_user{u['number']}": u["client_id"] for u in info["extra_app_users"]})
    users = {"dynamics365_default": sb.state.application_user_id}
    users.update({f"dynamics365_user{u['number']}": u["user_id"] for u in info["extra_app_users"]})
    since = client.last_seq()
    RevokingLoad.client = client
    op = RevokingLoad(
        task_id="load", run_folder=run_folder, instance=INSTANCE, ledger_url=ledger_url, batch_size=10, max_workers=2
    )
    stats = op.execute({"run_id": "pool"})  # type: ignore[arg-type]

    # The revocation happened mid-load and really hit: after it, Dataverse refused user 2's token and Entra ID its
    # secret, and user 2 wrote nothing it sent after the revocation (a batch already on its way may still land).
    assert op.revoked_at_seq is not None and op.revoked_at is not None
    assert op.written[REVOKED] >= RevokingLoad.after
    after = client.requests(since=op.revoked_at_seq)
    revoked_client = clients[REVOKED]
    refused_tokens = [
        e for e in after if e["server"] == "dataverse" and e["user"] == revoked_client and e["status"] != 200
    ]
    assert refused_tokens and {(e["status"], e.get("error_code")) for e in refused_tokens} == {
        (401, "ExpiredAuthTicket")
    }
    refused_secret = [e for e in after if e["server"] == "login" and e.get("client_id") == revoked_client]
    assert refused_secret and {(e["status"], e.get("error_code")) for e in refused_secret} == {(401, "AADSTS7000215")}
    log = client.requests(server="dataverse", since=since)
    written = Counter(e["user"] for e in log if e["path"] == BATCH and e["status"] == 200)
    assert written[revoked_client] == op.written[REVOKED]
    assert not [e for e in log if e["user"] == revoked_client and e["status"] == 200 and e["started"] > op.revoked_at]
    assert written[clients["dynamics365_default"]] > 0 and written[clients["dynamics365_user3"]] > 0
    assert sum(written.values()) == N_LEADS // 10  # every batch written once, by exactly one user

    # Every lead exactly once, as planned, owned by the planned owner whoever sent it.
    leads = client.get("/dataverse/leads")
    by_applicant = Counter(lead["uni_applicantid"] for lead in leads)
    assert len(leads) == N_LEADS and set(by_applicant.values()) == {1}
    for lead in leads:
        assert lead["leadid"] == lead_id_for(INSTANCE, int(lead["uni_applicantid"]))
        assert lead["_ownerid_value"] == owner  # the contact owner, not the application user that created it
    creators = Counter(lead["_createdby_value"] for lead in leads)
    assert set(creators) == set(users.values())  # each application user created some of them
    assert creators[users[REVOKED]] == op.written[REVOKED] * 10

    # The ledger is complete and the results file has one line per lead.
    ledger = Ledger(ledger_url)
    try:
        entries = ledger.entries(INSTANCE)
    finally:
        ledger.dispose()
    assert len(entries) == N_LEADS and all(e.state is LeadState.SENT for e in entries.values())
    lines = (Path(run_folder.removeprefix("file://")) / RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["applicant_id"] for line in lines) == list(range(1, N_LEADS + 1))

    # load/stats.json and the report name the removed user (connection, client id, code; never the secret).
    saved = json.loads((Path(run_folder.removeprefix("file://")) / STATS_FILE).read_text())
    assert saved["pool"]["removed"] == [
        {
            "connection_id": REVOKED,
            "client_id": revoked_client,
            "error_code": "AADSTS7000215",
            "status": None,
            "reason": "invalid client secret",
        }
    ]
    members = {m["connection_id"]: m for m in saved["pool"]["members"]}
    assert {name: m["batches"] for name, m in members.items()} == {name: written[clients[name]] for name in members}
    assert sum(m["operations"] for m in members.values()) == N_LEADS and not members[REVOKED]["active"]
    assert saved["workers"] == 6 and stats["batches"] == N_LEADS // 10
    report = build_report(dag_id="d", run_id="pool", outcomes={"created": N_LEADS}, extracted=N_LEADS, load_stats=saved)
    assert report["removed_users"][0]["connection_id"] == REVOKED
    text = summary_text(report)
    assert (
        f"user {REVOKED} removed from the pool: AADSTS7000215 invalid client secret (client {revoked_client})" in text
    )
    assert "application users: 3" in text
    dumped = json.dumps(saved) + text
    for secret in [info["client_secret"], *(u["client_secret"] for u in info["extra_app_users"])]:
        assert secret not in dumped


def test_a_pool_member_missing_from_airflow_fails_the_load_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "dynamics365", "host": "https://org.crm4.dynamics.com", "login": "app", "password": "secret"}
    monkeypatch.setenv("AIRFLOW_CONN_CRM", json.dumps(conn))
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    (folder / PLAN_FILE).write_text(json.dumps(planned(1, "00000000-0000-0000-0000-0000000000aa").to_json()) + "\n")
    target = {"connection_id": "crm", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}
    (folder / "preflight.json").write_text(json.dumps({"target": {**target, "pool": ["crm_user2"]}}))
    op = LoadLeadsOperator(
        task_id="load", run_folder="file://" + str(folder), instance=INSTANCE, ledger_url=f"sqlite:///{tmp_path}/l.db"
    )
    with pytest.raises(AirflowFailException, match=r"load: the credential pool of 'crm': .*crm_user2") as info:
        op.execute({"run_id": "r"})  # type: ignore[arg-type]
    assert "secret" not in str(info.value)
