"""A 5 000-lead load through LoadLeadsOperator on a bad day: 429 storms, 503s, resets, slow answers, token expiry.

The sandbox runs with small service-protection limits (its concurrency limit below the dop hint, so the
server throttles for real too) and fault rules on ``$batch``; a background thread expires every token
during the load. The end state must be exactly one lead per planned applicant holding the planned values,
and the request log must show that nothing was sent to the throttled user inside a Retry-After window.

"Inside a window": a 429 answered at ``finished`` with ``Retry-After: r`` opens ``[finished, finished + r)``.
A request logged as started in that window is allowed only if the client had admitted it before it saw
that 429 (it was already on the wire). To know that, the test's hook tags each request with the id of its
throttle ticket (``X-Test-Ticket``); the throttle stamps a ticket when it admits the request and when the
answer comes back, under the same lock that starts the pause, so the comparison is exact.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from planned import planned_create

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.throttle import Ticket
from d365.operators.load_leads import PLAN_FILE, RESULTS_FILE, STATS_FILE, LoadLeadsOperator
from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.plan import OWNER_BIND, Operation
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections
from sandbox.config import ServiceProtectionLimits

N_LEADS = 5000
INSTANCE = "faults.example"
TICKET_HEADER = "X-Test-Ticket"
OWNER_EMAIL = "anna.virtanen@university.example"  # an enabled person in the sandbox


class TracingHook(DynamicsHook):
    """Tags every request with its throttle ticket so the test can tell 'on the wire' from 'sent too early'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoff_base = 0.05  # keep transient-fault backoff short in tests
        self.tickets: dict[int, Ticket] = {}

    def _transmit(self, session: Any, method: str, url: str, body: Any, headers: Any, auth: Any, ticket: Any) -> Any:
        self.tickets[ticket.id] = ticket
        return super()._transmit(session, method, url, body, {**headers, TICKET_HEADER: str(ticket.id)}, auth, ticket)


class TracingLoad(LoadLeadsOperator):
    hook: TracingHook | None = None

    def get_hook(self) -> TracingHook:
        self.hook = TracingHook(
            self.dynamics365_conn_id, throttle={**self.throttle, "max_concurrency": self.max_workers}
        )
        return self.hook


def planned(aid: int, owner: str) -> Operation:
    """One create as the plan step emits it (final request, owned by ``owner``)."""
    return planned_create(aid, owner, instance=INSTANCE)


def _header(entry: dict[str, Any], name: str) -> str | None:
    for key, value in (entry.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def retry_after_violations(log: list[dict[str, Any]], tickets: dict[int, Ticket]) -> tuple[list[str], int]:
    """Requests to a throttled user inside a Retry-After window that the client sent after seeing the 429."""
    violations: list[str] = []
    on_the_wire = 0
    by_user: dict[str, list[dict[str, Any]]] = {}
    for e in log:
        if e.get("user"):
            by_user.setdefault(e["user"], []).append(e)
    for entries in by_user.values():
        for throttled in (e for e in entries if e["status"] == 429):
            start, end = throttled["finished"], throttled["finished"] + float(throttled["retry_after"])
            seen = tickets[int(_header(throttled, TICKET_HEADER) or 0)].released_at
            assert seen is not None and seen >= throttled["finished"]
            for e in entries:
                if e is throttled or not (start <= e["started"] < end):
                    continue
                admitted = tickets[int(_header(e, TICKET_HEADER) or 0)].admitted_at
                if admitted < seen:
                    on_the_wire += 1
                else:
                    violations.append(
                        f"seq {e['seq']} started {e['started'] - start:.3f} s into the {end - start:.0f} s window "
                        f"of seq {throttled['seq']}, admitted {admitted - seen:.3f} s after the 429 was seen"
                    )
    return violations, on_the_wire


@pytest.fixture
def load_env(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SandboxClient, str, str]:
    limits = ServiceProtectionLimits(
        window_seconds=5.0,
        max_requests=200,
        max_execution_ms=20_000.0,
        max_concurrent=4,  # below the dop hint: the server's own concurrency 429s join the injected ones
        retry_after_seconds=1.0,
        retry_after_max_seconds=4.0,
        dop_hint=6,
    )
    sb, client = make_sandbox(applicants=10, limits=limits, request_latency_ms=5.0, operation_ms=0.2)
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    owner = DynamicsHook().find_systemuser(email=OWNER_EMAIL)["systemuserid"]  # as preflight resolves it
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    with (folder / PLAN_FILE).open("w", encoding="utf-8") as fh:
        for aid in range(1, N_LEADS + 1):
            fh.write(json.dumps(planned(aid, owner).to_json()) + "\n")
    # the target as preflight records it: the operator takes the connection and entity set from here
    target = {"connection_id": "dynamics365_default", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}
    (folder / "preflight.json").write_text(json.dumps({"instance": INSTANCE, "target": target}))
    return client, "file://" + str(folder), f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
def test_5000_leads_through_429_storms_503s_resets_latency_and_token_expiry(
    load_env: tuple[SandboxClient, str, str], tmp_path: Path
) -> None:
    client, run_folder, ledger_url = load_env
    batch = r"/\$batch$"
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", path=batch, every=9)
    client.add_fault(kind="status", status=429, retry_after=2, server="dataverse", path=batch, nth=25, times=3)
    client.add_fault(kind="status", status=503, server="dataverse", path=batch, every=7)
    client.add_fault(kind="reset", server="dataverse", path=batch, every=11)
    client.add_fault(kind="latency", seconds=0.25, server="dataverse", path=batch, rate=0.15, seed=3)
    seq = client.last_seq()

    stop = threading.Event()
    expired = 0

    def expire_tokens() -> None:
        nonlocal expired
        while not stop.wait(1.5):
            client.expire_tokens()
            expired += 1

    expirer = threading.Thread(target=expire_tokens, daemon=True)
    op = TracingLoad(
        task_id="load", run_folder=run_folder, instance=INSTANCE, ledger_url=ledger_url, batch_size=50, max_workers=6
    )
    started = time.monotonic()
    expirer.start()
    try:
        stats = op.execute({"run_id": "faults"})  # type: ignore[arg-type]
    finally:
        stop.set()
        expirer.join()
    elapsed = time.monotonic() - started
    assert op.hook is not None

    # End state: exactly one lead per planned applicant, holding the planned values.
    plan_file = Path(run_folder.removeprefix("file://")) / PLAN_FILE
    plan = {op.applicant_id: op for op in map(Operation.from_json, map(json.loads, plan_file.read_text().splitlines()))}
    leads = client.get("/dataverse/leads")
    by_applicant: dict[str, list[dict[str, Any]]] = {}
    for lead in leads:
        by_applicant.setdefault(str(lead.get("uni_applicantid")), []).append(lead)
    assert len(leads) == N_LEADS and len(by_applicant) == N_LEADS
    for aid in range(1, N_LEADS + 1):
        (lead,) = by_applicant[str(aid)]
        op_ = plan[aid]
        assert lead["leadid"] == op_.lead_id
        assert {k: lead.get(k) for k in op_.body if k != OWNER_BIND} == {
            k: v for k, v in op_.body.items() if k != OWNER_BIND
        }
        assert op_.owner_id is not None and lead["_ownerid_value"] == op_.owner_id  # the planned owner, as sent

    ledger = Ledger(ledger_url)
    try:
        entries = ledger.entries(INSTANCE)
    finally:
        ledger.dispose()
    assert len(entries) == N_LEADS and all(e.state is LeadState.SENT for e in entries.values())
    results_file = Path(run_folder.removeprefix("file://")) / RESULTS_FILE
    outcomes = [json.loads(line)["outcome"] for line in results_file.read_text().splitlines()]
    assert len(outcomes) == N_LEADS and set(outcomes) == {"created"}

    # The faults really happened, and the load got through them.
    log = client.requests(server="dataverse", since=seq)
    statuses = [e["status"] for e in log]
    assert statuses.count(429) >= 5 and statuses.count(503) >= 3 and statuses.count(0) >= 3
    assert statuses.count(401) >= 1 and expired >= 1 and stats["auth_refreshes"] >= 2
    assert any((e.get("fault") or {}).get("kind") == "latency" for e in log)

    # No request to the throttled user inside a Retry-After window, bar those already on the wire.
    violations, on_the_wire = retry_after_violations(log, op.hook.tickets)
    assert not violations, violations[:5]
    assert on_the_wire <= statuses.count(429) * 6  # at most one per worker per 429

    # The throttle's view is in load/stats.json for the report.
    saved = json.loads((Path(run_folder.removeprefix("file://")) / STATS_FILE).read_text())
    throttle = saved["throttle"]
    assert throttle["throttled_429"] == statuses.count(429) and throttle["retry_after_waits"] >= 1
    assert throttle["concurrency_decreases"] >= 1 and throttle["concurrency_cap"] == 6
    assert saved["workers"] == 6 and saved["writes"] == N_LEADS and saved["skipped"] == 0
    print(
        f"\n5000 leads in {elapsed:.1f} s: {statuses.count(429)} x 429, {statuses.count(503)} x 503, "
        f"{statuses.count(0)} resets, {statuses.count(401)} x 401, {on_the_wire} on the wire, "
        f"min concurrency {throttle['min_concurrency']}, waits {throttle['retry_after_wait_seconds']} s"
    )


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
def test_a_second_try_skips_what_the_first_did(load_env: tuple[SandboxClient, str, str]) -> None:
    client, run_folder, ledger_url = load_env
    first = LoadLeadsOperator(task_id="load", run_folder=run_folder, instance=INSTANCE, ledger_url=ledger_url)
    first.execute({"run_id": "one"})  # type: ignore[arg-type]
    seq = client.last_seq()
    again = LoadLeadsOperator(task_id="load", run_folder=run_folder, instance=INSTANCE, ledger_url=ledger_url)
    stats = again.execute({"run_id": "two"})  # type: ignore[arg-type]
    assert stats["skipped"] == N_LEADS and stats["batches"] == 0
    assert [e for e in client.requests(server="dataverse", since=seq) if e["user"]] == []  # not even a WhoAmI
