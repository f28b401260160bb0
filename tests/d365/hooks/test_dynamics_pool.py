"""The credential pool over real TLS against a sandbox with several application users: work is spread over every
member, a member whose secret is revoked leaves the pool and its operations go to another, no member left → the
error; configuration that cannot share a load is refused naming the connection, and no secret is ever shown."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from d365.hooks.dynamics import BatchOperation, BatchResult, DynamicsHook
from d365.hooks.dynamics_pool import (
    ApplicationUserProblem,
    DynamicsPool,
    check_application_user,
    write_batch,
)
from d365.hooks.dynamics_settings import PoolConfigError, parse_pool
from d365.hooks.errors import DynamicsAuthError
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

BATCH = "/api/data/v9.2/$batch"


class PoolEnv:
    """A sandbox with three application users, their connections in the environment, pools built on request."""

    def __init__(self, sb: Sandbox, client: SandboxClient) -> None:
        self.sb = sb
        self.client = client
        info = sb.info()
        self.clients = [info["entra"]["client_id"], *(u["client_id"] for u in info["entra"]["extra_app_users"])]
        self.secrets = [info["entra"]["client_secret"], *(u["client_secret"] for u in info["entra"]["extra_app_users"])]
        self.pools: list[DynamicsPool] = []

    def pool(self, members: Sequence[str] | None = None) -> DynamicsPool:
        def make(conn_id: str) -> DynamicsHook:
            hook = DynamicsHook(conn_id)
            hook.backoff_base = 0.05
            return hook

        pool = DynamicsPool.from_connection("dynamics365_default", members=members, make_hook=make)
        self.pools.append(pool)
        return pool

    def batches(self, since: int) -> Counter[str]:
        """$batch requests the sandbox answered 200, per client id."""
        log = self.client.requests(server="dataverse", since=since)
        return Counter(e["user"] for e in log if e["path"] == BATCH and e["status"] == 200)


@pytest.fixture
def pool_env(make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch) -> Any:
    sb, client = make_sandbox(applicants=10, extra_app_users=2)
    for name, conn in airflow_connections(sb.info(), dynamics_pool=True).items():
        monkeypatch.setenv(name, json.dumps(conn))
    env = PoolEnv(sb, client)
    yield env
    for pool in env.pools:
        pool.close()


def upserts(marker: str, n: int) -> list[BatchOperation]:
    """``n`` lead upserts by new GUIDs (creates), each naming its row for errors."""
    return [
        BatchOperation(
            "PATCH",
            f"leads({uuid.uuid4()})",
            {"lastname": f"Pool {marker} {i}", "subject": f"pool test {marker}"},
            record=f"{marker}-{i}",
        )
        for i in range(n)
    ]


def leads_of(client: SandboxClient, marker: str) -> list[dict[str, Any]]:
    return [lead for lead in client.get("/dataverse/leads") if lead.get("subject") == f"pool test {marker}"]


def test_the_pool_spreads_batches_over_every_member(pool_env: PoolEnv) -> None:
    pool = pool_env.pool()
    assert [m.connection_id for m in pool.members] == ["dynamics365_default", "dynamics365_user2", "dynamics365_user3"]
    who = pool.whoami()
    assert len({w["UserId"] for w in who.values()}) == 3  # three application users, each its own
    assert pool.cap == sum(m.hook.throttle.cap for m in pool.members)
    since = pool_env.client.last_seq()

    sequential = [pool.send(ops) for ops in (upserts("seq", 4) for _ in range(9))]
    assert all(r.ok for results in sequential for r in results)
    # one at a time, least used first: round robin
    assert pool_env.batches(since) == Counter({c: 3 for c in pool_env.clients})

    since = pool_env.client.last_seq()
    chunks = [upserts("par", 5) for _ in range(30)]
    with ThreadPoolExecutor(max_workers=pool.cap) as workers:
        answered = list(workers.map(pool.send, chunks))
    assert all(r.ok for results in answered for r in results)
    sent = pool_env.batches(since)
    assert set(sent) == set(pool_env.clients) and sum(sent.values()) == 30
    stats = pool.stats
    members = {m["client_id"]: m for m in stats["pool"]["members"]}
    assert {c: members[c]["batches"] - 3 for c in pool_env.clients} == dict(sent)  # the pool's count = the log's
    assert sum(m["operations"] for m in members.values()) == 9 * 4 + 30 * 5
    assert stats["requests"] == sum(m.hook.stats["requests"] for m in pool.members)
    assert stats["pool"]["removed"] == [] and stats["pool"]["users"] == 3
    assert len(leads_of(pool_env.client, "par")) == 150

    throttle = pool.throttle_snapshot()
    assert throttle["concurrency_cap"] == pool.cap
    assert set(throttle["members"]) == {m.connection_id for m in pool.members}
    assert throttle["admitted"] == sum(s["admitted"] for s in throttle["members"].values())
    assert throttle["window_seconds"] == pool.members[0].hook.throttle.snapshot()["window_seconds"]


def test_a_revoked_member_leaves_the_pool_and_its_batch_goes_to_another(
    pool_env: PoolEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = pool_env.pool()
    pool.whoami()
    for _ in range(3):  # every member has a token and has written
        assert all(r.ok for r in pool.send(upserts("before", 2)))
    revoked = pool_env.clients[1]
    since = pool_env.client.last_seq()
    pool_env.client.revoke_app_secret(revoked)

    answered = [pool.send(ops) for ops in (upserts("after", 3) for _ in range(6))]

    assert all(r.ok for results in answered for r in results)
    assert len(leads_of(pool_env.client, "after")) == 18  # every operation written once, none lost
    assert [r.to_json() for r in pool.removed] == [
        {
            "connection_id": "dynamics365_user2",
            "client_id": revoked,
            "error_code": "AADSTS7000215",
            "status": None,
            "reason": "invalid client secret",
        }
    ]
    assert (
        pool.removed[0].describe()
        == "user dynamics365_user2 removed from the pool: AADSTS7000215 invalid client secret"
    )
    assert [m.connection_id for m in pool.active] == ["dynamics365_default", "dynamics365_user3"]
    assert pool.cap == sum(m.cap for m in pool.active)
    # the revocation really hit: Dataverse refused the held token, Entra ID the secret
    log = pool_env.client.requests(since=since)
    assert [(e["status"], e.get("error_code")) for e in log if e["server"] == "dataverse" and e["user"] == revoked] == [
        (401, "ExpiredAuthTicket")
    ]
    assert [
        (e["status"], e["error_code"]) for e in log if e["server"] == "login" and e.get("client_id") == revoked
    ] == [(401, "AADSTS7000215")]
    assert set(pool_env.batches(since)) == {pool_env.clients[0], pool_env.clients[2]}
    assert pool.stats["pool"]["removed"][0]["connection_id"] == "dynamics365_user2"
    assert "dynamics365_user2 removed from the pool: AADSTS7000215" in caplog.text
    shown = caplog.text + json.dumps(pool.stats) + json.dumps(pool.throttle_snapshot())
    for secret in pool_env.secrets:
        assert secret not in shown


def test_no_member_left_raises_the_last_auth_error(pool_env: PoolEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pool = pool_env.pool(members=["dynamics365_user2"])
    pool.whoami()
    for client_id in pool_env.clients[:2]:
        pool_env.client.revoke_app_secret(client_id)
    since = pool_env.client.last_seq()
    with pytest.raises(DynamicsAuthError) as info:
        pool.send(upserts("none", 2))
    assert info.value.code == "AADSTS7000215"
    assert [r.connection_id for r in pool.removed] == ["dynamics365_default", "dynamics365_user2"]
    assert pool.active == [] and pool_env.batches(since) == Counter()
    with pytest.raises(DynamicsAuthError):  # and nothing is sent any more
        pool.send(upserts("none", 1))
    assert not [e for e in pool_env.client.requests(since=since) if e["server"] == "dataverse" and e["status"] == 200]
    assert leads_of(pool_env.client, "none") == []
    for secret in pool_env.secrets:
        assert secret not in str(info.value) and secret not in caplog.text


def test_whoami_removes_a_member_whose_secret_is_wrong(pool_env: PoolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = airflow_connections(pool_env.sb.info())["AIRFLOW_CONN_DYNAMICS365_USER3"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER3", json.dumps({**conn, "password": "not-the-secret"}))
    pool = pool_env.pool()
    answers = pool.whoami()
    assert set(answers) == {"dynamics365_default", "dynamics365_user2"}
    assert [(r.connection_id, r.error_code) for r in pool.removed] == [("dynamics365_user3", "AADSTS7000215")]
    assert all(r.ok for r in pool.send(upserts("whoami", 2)))


def test_a_token_refused_once_more_after_the_refresh_is_tried_again_on_the_same_member(pool_env: PoolEnv) -> None:
    """The hook refreshes a refused token itself; if Dataverse refuses the new one too (it expired on its way), the
    pool sends once more on the same member before it gives up on it."""
    pool = pool_env.pool(members=["dynamics365_user2"])
    pool.whoami()
    calls: list[str] = []

    def refused_once(hook: DynamicsHook, ops: Sequence[Any]) -> list[BatchResult]:
        calls.append(hook.dynamics365_conn_id)
        if len(calls) == 1:
            raise DynamicsAuthError("The access token is expired.", status=401, method="POST", path=BATCH)
        return write_batch(hook, ops)

    assert all(r.ok for r in pool.send(upserts("again", 2), refused_once))
    assert calls == ["dynamics365_default", "dynamics365_default"] and pool.removed == []

    def always_refused(hook: DynamicsHook, ops: Sequence[Any]) -> list[BatchResult]:
        calls.append(hook.dynamics365_conn_id)
        if hook.dynamics365_conn_id == "dynamics365_user2":
            raise DynamicsAuthError("The access token is expired.", status=401, method="POST", path=BATCH)
        return write_batch(hook, ops)

    calls.clear()
    assert all(r.ok for r in pool.send(upserts("again", 2), always_refused))  # user2 is least used now
    assert calls == ["dynamics365_user2", "dynamics365_user2", "dynamics365_default"]
    assert [(r.connection_id, r.status, r.reason) for r in pool.removed] == [
        ("dynamics365_user2", 401, "access token refused by Dataverse")
    ]


def test_errors_other_than_authentication_are_the_callers(pool_env: PoolEnv) -> None:
    pool = pool_env.pool()
    pool.whoami()

    def broken(hook: DynamicsHook, ops: Sequence[Any]) -> list[BatchResult]:
        raise ValueError("not an auth problem")

    with pytest.raises(ValueError, match="not an auth problem"):
        pool.send(upserts("x", 1), broken)
    assert pool.removed == [] and all(m.in_flight == 0 for m in pool.members)


def test_preflight_check_of_an_application_user(pool_env: PoolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = pool_env.pool()
    found = [check_application_user(m.hook) for m in pool.members]
    assert [u.client_id for u in found] == pool_env.clients
    assert all(u.roles == ("DreamApply Integration",) for u in found)
    assert len({u.user_id for u in found}) == 3
    # a WhoAmI that names a person: the check reads that user (enabled, a role) and passes it; a disabled one fails
    people = pool.primary.list_systemusers(filter="applicationid eq null and isdisabled eq true")
    with pytest.raises(ApplicationUserProblem, match=f"its application user {people[0]['systemuserid']} is disabled"):
        check_application_user(pool.primary, {"UserId": people[0]["systemuserid"]})
    with pytest.raises(ApplicationUserProblem, match="is not a user of the organization"):
        check_application_user(pool.primary, {"UserId": "00000000-0000-0000-0000-0000000000ab"})
    conn = airflow_connections(pool_env.sb.info())["AIRFLOW_CONN_DYNAMICS365_USER2"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER2", json.dumps({**conn, "password": "wrong"}))
    with pytest.raises(DynamicsAuthError) as info:
        check_application_user(DynamicsHook("dynamics365_user2"))
    assert info.value.code == "AADSTS7000215" and "wrong" not in str(info.value)


# -- configuration ------------------------------------------------------------------------------------------------
def test_the_pool_extra_is_parsed_and_checked() -> None:
    assert parse_pool("c", None) == () and parse_pool("c", []) == ()
    assert parse_pool("c", ["u2", " u3 "]) == ("u2", "u3")
    assert parse_pool("c", "u2, u3") == ("u2", "u3")
    with pytest.raises(PoolConfigError, match=r"connection 'c': the pool names \['u2'\] more than once"):
        parse_pool("c", ["u2", "u2"])
    with pytest.raises(PoolConfigError, match="names the connection itself"):
        parse_pool("c", ["c"])
    with pytest.raises(PoolConfigError, match="must be a list of Airflow connection ids"):
        parse_pool("c", {"u2": True})
    assert not PoolConfigError("x").retryable


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"host": "https://other.crm4.dynamics.com"}, "its organization https://other.crm4.dynamics.com is not"),
        (
            {"extra_tenant_id": "00000000-0000-0000-0000-000000000001"},
            "its tenant 00000000-0000-0000-0000-000000000001",
        ),
        ({"login": "PRIMARY"}, "the primary's own application user"),
        ({"extra_pool": ["dynamics365_user3"]}, "names a pool of its own"),
    ],
)
def test_a_member_that_cannot_share_the_load_is_refused_naming_it(
    pool_env: PoolEnv, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], message: str
) -> None:
    info = pool_env.sb.info()
    conns = airflow_connections(info, dynamics_pool=True)
    primary = conns["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    primary["extra"]["tenant_id"] = info["entra"]["tenant_id"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(primary))
    member = conns["AIRFLOW_CONN_DYNAMICS365_USER2"]
    for key, value in change.items():
        if key.startswith("extra_"):
            member["extra"][key.removeprefix("extra_")] = value
        else:
            member[key] = primary["login"] if value == "PRIMARY" else value
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER2", json.dumps(member))
    since = pool_env.client.last_seq()
    with pytest.raises(PoolConfigError) as raised:
        pool_env.pool()
    text = str(raised.value)
    assert f"connection 'dynamics365_user2' (client {member['login']}) in the pool of 'dynamics365_default'" in text
    assert message in text
    assert all(secret not in text for secret in pool_env.secrets)
    sent = [e for e in pool_env.client.requests(since=since) if e["server"] in ("dataverse", "login")]
    assert sent == []  # refused before any request


def test_the_same_application_user_twice_is_refused(pool_env: PoolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    conns = airflow_connections(pool_env.sb.info())
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER3", json.dumps(conns["AIRFLOW_CONN_DYNAMICS365_USER2"]))
    with pytest.raises(PoolConfigError, match="the same application user as 'dynamics365_user2'"):
        pool_env.pool()


def test_without_a_pool_the_hook_is_alone(pool_env: PoolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    conns = airflow_connections(pool_env.sb.info())
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conns["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]))
    pool = pool_env.pool()
    assert [m.connection_id for m in pool.members] == ["dynamics365_default"]
    pool.whoami()
    assert pool.cap == pool.primary.throttle.cap
    assert pool.throttle_snapshot() == pool.primary.throttle.snapshot()
