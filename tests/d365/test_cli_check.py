"""``python -m d365 check``: preflight against a sandbox over TLS, without a sync: nothing left behind, nothing
written, a failure named without its secret."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from d365 import cli_check
from sandbox.client import airflow_connections


@pytest.fixture
def org(make_sandbox: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox with a two-user credential pool; connections from ``AIRFLOW_CONN_*``; run root and ledger pointed
    into the test's folder, so anything the check left there would show."""
    sb, client = make_sandbox(applicants=10, extra_app_users=1)
    for name, conn in airflow_connections(sb.info(), dynamics_pool=True).items():
        monkeypatch.setenv(name, json.dumps(conn))
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))
    monkeypatch.setenv("D365_SYNC_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    return sb, client


def test_check_passes_on_the_sandbox_and_leaves_nothing_behind(
    org: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, client = org
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR: the check's throwaway folder lands here
    since = client.last_seq()
    assert cli_check.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "check ok: preflight passed (nothing extracted, nothing written)"
    checked = "\n".join(out)
    user2 = sb.info()["entra"]["extra_app_users"][0]["client_id"]
    assert "Dynamics 365 connection dynamics365_default: token and WhoAmI ok" in checked
    assert f"application user dynamics365_user2 (client {user2}): enabled, roles DreamApply Integration" in checked
    assert "lead table lead (entity set leads)" in checked and "alternate key uni_applicantid: Active" in checked
    assert "contact_owner: systemuser " in checked and "DreamApply connection dreamapply_default" in checked
    # nothing left behind: no run folder, no ledger, no temp folder; every Dynamics request a read
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ledger.db").exists()
    assert list(temp.iterdir()) == []
    dataverse = client.requests(server="dataverse", since=since)
    assert dataverse and all(e["method"] == "GET" for e in dataverse)
    dreamapply = client.requests(server="dreamapply", since=since)
    assert {e["path"].rsplit("/", 1)[-1] for e in dreamapply} == {"ping"}  # asked, nothing extracted


def test_check_fails_with_a_wrong_secret_naming_the_connection_not_the_secret(
    org: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, client = org
    conn = airflow_connections(sb.info(), dynamics_pool=True)["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    secret = "wrong-check-secret-0123"
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps({**conn, "password": secret}))
    since = client.last_seq()
    assert cli_check.main([]) == 1
    out = capsys.readouterr()
    failed = next(line for line in out.err.splitlines() if line.startswith("check failed:"))  # after the logs
    assert failed.startswith("check failed: preflight failed: Dynamics 365 connection 'dynamics365_default'")
    assert "AADSTS7000215" in failed
    assert secret not in out.err + out.out and conn["password"] not in out.err + out.out
    assert "check ok" not in out.out
    assert client.requests(server="dreamapply", since=since) == []  # stopped before DreamApply
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ledger.db").exists()


def test_check_fails_on_a_pool_member_with_a_wrong_secret(
    org: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sb, _ = org
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_USER2"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_USER2", json.dumps({**conn, "password": "wrong-user2-secret"}))
    assert cli_check.main([]) == 1
    err = capsys.readouterr().err
    assert f"application user 'dynamics365_user2' (client {conn['login']}): AADSTS7000215" in err
    assert "wrong-user2-secret" not in err and conn["password"] not in err


def test_check_names_a_settings_file_that_is_not_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "settings.yaml"
    bad.write_text("data_mapping: {lastname: applicant.name.family}\ncontact_owner: {email: nobody}\n")
    assert cli_check.main(["--settings", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"check failed: {bad}") and "contact_owner" in err  # nothing asked of any service
    assert os.path.exists(bad)
