"""Real Airflow components, no Docker: scheduler, dag-processor and api-server on PostgreSQL with the
LocalExecutor; the sync DAG is triggered through the REST API and must succeed against the sandbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from sandbox.client import airflow_connections

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "dreamapply_to_dynamics365"
PG_ADMIN = os.environ.get("D365_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def airflow_on_postgres(tmp_path: Path, make_sandbox):  # type: ignore[no-untyped-def]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"d365_airflow_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    sb, client = make_sandbox(applicants=40, dreamapply_requests_per_minute=100_000)
    port = _free_port()
    home = tmp_path / "airflow"
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": PG_ADMIN.rsplit("/", 1)[0] + f"/{name}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "D365_SYNC_LEDGER_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{name}",
        "D365_SYNC_RUN_ROOT": "file://" + str(tmp_path / "runs"),
        "D365_SYNC_TASK_RETRIES": "0",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.update({k: json.dumps(v) for k, v in airflow_connections(sb.info(), requests_per_minute=100_000).items()})
    airflow = [sys.executable, "-m", "airflow"]
    done = subprocess.run([*airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for pool in ("dreamapply_api", "dynamics365_api"):
        subprocess.run([*airflow, "pools", "set", pool, "2", pool], env=env, check=True, capture_output=True)
    procs = [
        subprocess.Popen([*airflow, cmd], env=env, stdout=(tmp_path / f"{cmd}.log").open("w"), stderr=subprocess.STDOUT)
        for cmd in ("api-server", "scheduler", "dag-processor")
    ]
    try:
        yield f"http://127.0.0.1:{port}", client, tmp_path, env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_scheduler_runs_the_sync_triggered_over_rest_and_a_cli_backfill(airflow_on_postgres) -> None:  # type: ignore[no-untyped-def]
    base, client, tmp_path, env = airflow_on_postgres
    http = _authorised(base)
    _unpause(http, base)
    r = http.post(f"{base}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None}, timeout=10)
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["dag_run_id"]
    state = _wait(http, base, run_id, tmp_path)
    assert state == "success"
    assert client.get("/dataverse/stats")["leads"] > 0

    # A backfill over two hourly intervals, created with the CLI as the README documents: the scheduler
    # runs both, one at a time (max_active_runs=1), and the second finds nothing new to send.
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", DAG_ID,
         "--from-date", "2026-01-01T00:00:00+00:00", "--to-date", "2026-01-01T01:00:00+00:00",
         "--max-active-runs", "1"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deadline = time.monotonic() + 300
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = http.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns", params={"run_type": "backfill"}, timeout=10).json()[
            "dag_runs"
        ]
        if len(runs) >= 2 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(3)
    assert len(runs) >= 2 and all(r["state"] == "success" for r in runs), runs


def _authorised(base: str) -> requests.Session:
    http = requests.Session()
    deadline = time.monotonic() + 120
    token = None
    while time.monotonic() < deadline and token is None:
        try:
            r = http.get(f"{base}/auth/token", timeout=5)
            if r.status_code in (200, 201):
                token = r.json()["access_token"]
        except requests.RequestException:
            time.sleep(1)
            continue
        if token is None:
            r = http.post(f"{base}/auth/token", json={}, timeout=5)
            if r.status_code in (200, 201):
                token = r.json()["access_token"]
            else:
                time.sleep(1)
    assert token, "the api-server did not issue a token"
    http.headers["Authorization"] = f"Bearer {token}"
    return http


def _unpause(http: requests.Session, base: str) -> None:
    deadline = time.monotonic() + 120
    r = None
    while time.monotonic() < deadline:  # the dag-processor must have parsed the DAG
        r = http.get(f"{base}/api/v2/dags/{DAG_ID}", timeout=5)
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r is not None and r.status_code == 200, r.text if r is not None else "no answer"
    http.patch(f"{base}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=10).raise_for_status()


def _wait(http: requests.Session, base: str, run_id: str, tmp_path: Path) -> str | None:
    state = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = http.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=10).json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
    assert state == "success", f"run ended {state}\n{logs}"
    return state
