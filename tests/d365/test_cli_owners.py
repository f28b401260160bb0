"""``python -m d365 owners``: the org's users who can own leads, read over TLS from a sandbox, by preflight's rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from d365 import cli_owners
from d365.__main__ import main as d365_main
from d365.pipeline.settings import parse_settings
from sandbox.client import airflow_connections

REPO = Path(__file__).resolve().parents[2]
PEOPLE = ["Anna Virtanen", "Bruno Costa", "Chloé Martin", "Daniel O'Brien", "Eva Lindqvist"]


@pytest.fixture
def org(make_sandbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox with two application users; the Airflow connections point at it (``AIRFLOW_CONN_*``)."""
    sb, client = make_sandbox(applicants=10, extra_app_users=1)
    for name, conn in airflow_connections(sb.info()).items():
        monkeypatch.setenv(name, json.dumps(conn))
    return sb, client


def test_owners_lists_the_enabled_people_and_not_app_disabled_or_built_in_users(
    org: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, client = org
    since = client.last_seq()
    assert cli_owners.main(["--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in listed] == PEOPLE  # sorted by name; Frank Meyer (disabled) is not there
    anna = listed[0]
    assert anna["email"] == "anna.virtanen@university.example" and len(anna["id"]) == 36
    assert anna["configured_as"] == ["contact_owner"]  # the repository's settings name her
    names = " ".join(o["name"] for o in listed)
    for absent in ("Frank", "SYSTEM", "INTEGRATION", "# DreamApply"):
        assert absent not in names
    app_ids = {sb.info()["entra"]["client_id"], sb.info()["entra"]["extra_app_users"][0]["client_id"]}
    assert not any(o["email"].split("@")[0] in app_ids for o in listed)
    reads = client.requests(server="dataverse", since=since)
    assert reads and all(e["method"] == "GET" for e in reads)  # a listing only reads
    assert any(e["path"].endswith("/systemusers") for e in reads)


def test_owners_table_marks_the_configured_owners(org: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_owners.main([]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Dynamics 365 users who can own leads (connection dynamics365_default): 5"
    assert lines[1].split() == ["name", "email", "id", "in", "settings"]
    anna = next(line for line in lines if line.strip().startswith("Anna Virtanen"))
    assert anna.rstrip().endswith("contact_owner") and "anna.virtanen@university.example" in anna
    assert not any("Frank" in line or "SYSTEM" in line for line in lines)


def test_the_owner_rule_is_preflights(org: Any) -> None:
    """Marks follow the settings' owners whichever way they name them (email, domain name, id; any case)."""
    rows = [
        {"systemuserid": "a" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": "Ada", "internalemailaddress": "A@x.ex"},
        {"systemuserid": "b" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": "Bob", "domainname": "bob@x.ex"},
        {"systemuserid": "c" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": "Cy", "accessmode": 4},
        {"systemuserid": "d" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": " system "},
        {"systemuserid": "e" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": "Eve", "applicationid": "x"},
        {"systemuserid": "f" * 8 + "-0000-0000-0000-" + "0" * 12, "fullname": "Fay", "isdisabled": True},
    ]
    settings = parse_settings(
        {
            "data_mapping": {"lastname": "applicant.name.family"},
            "contact_owner": {"email": "a@x.ex"},
            "owner_rules": [
                {"when": {"citizenship": ["FI"]}, "owner": {"domainname": "BOB@x.ex"}},
                {"when": {"citizenship": ["SE"]}, "owner": {"id": "BBBBBBBB-0000-0000-0000-000000000000"}},
            ],
        }
    )
    owners = cli_owners.eligible_owners(rows, cli_owners.configured_owners(settings))
    assert [(o.name, o.configured_as) for o in owners] == [
        ("Ada", ["contact_owner"]),
        ("Bob", ["owner_rules[0].owner", "owner_rules[1].owner"]),
    ]


def test_owners_with_a_wrong_secret_fails_naming_the_connection_without_the_secret(
    org: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, _ = org
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps({**conn, "password": "wrong-owners-secret"}))
    assert cli_owners.main([]) == 1
    out = capsys.readouterr()
    assert "Dynamics 365 connection 'dynamics365_default'" in out.err and "AADSTS7000215" in out.err
    assert "wrong-owners-secret" not in out.err + out.out


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_python_dash_m_d365_dispatches(org: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert d365_main(["owners", "--json"]) == 0
    assert [o["name"] for o in json.loads(capsys.readouterr().out)] == PEOPLE
    assert d365_main(["nonsense"]) == 2 and "unknown command 'nonsense'" in capsys.readouterr().err
    assert d365_main([]) == 2
    # the real entry point, in a fresh interpreter, with the same connections from the environment
    done = subprocess.run(
        [sys.executable, "-m", "d365", "owners", "--connection", "dynamics365_user2"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "(connection dynamics365_user2): 5" in done.stdout and "Eva Lindqvist" in done.stdout
