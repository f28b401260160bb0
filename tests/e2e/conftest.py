"""Whole-DAG runs: a migrated Airflow metadata DB, a private sandbox, connections from the environment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "dreamapply_to_dynamics365"
E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every whole-DAG test is ``slow``: ``make test-fast`` (``-m "not slow"``) leaves them to ``make test``.

    A session-wide hook (pytest passes every collected item), so only the items under tests/e2e/ are marked."""
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_stream() -> None:
    """An earlier test's ``dag.test()`` may leave a log handler on the stream pytest captured for that test; once
    the stream is closed every record through it prints "--- Logging error ---" with the exception being handled
    at the time, which is another test's noise in this test's output. Such handlers are dropped before each test."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                logger.removeHandler(handler)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """``airflow db migrate`` once per session, in the private AIRFLOW_HOME set by tests/conftest.py."""
    home = os.environ["AIRFLOW_HOME"]
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home


@dataclass
class SyncEnv:
    sandbox: Sandbox
    client: SandboxClient
    ledger_url: str
    run_root: Path

    def run(self, dag_id: str = DAG_ID, **conf: Any) -> Any:
        """Run the real DAG (the sync, or ``dag_id``: its dry-run DAG) once with ``dag.test()``; the DagRun."""
        from airflow.models import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        return bag.get_dag(dag_id).test(run_conf=conf or None)

    def leads(self) -> list[dict[str, Any]]:
        return self.client.get("/dataverse/leads")

    def reports(self) -> list[dict[str, Any]]:
        return [
            json.loads(p.read_text())
            for p in sorted(self.run_root.glob(f"{DAG_ID}/*/report.json"), key=os.path.getmtime)
        ]


@pytest.fixture
def sync_env(
    airflow_db: str,
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Callable[..., SyncEnv]]:
    """A private sandbox wired to the DAG through AIRFLOW_CONN_* and D365_SYNC_* variables."""

    def make(settings: Path | None = None, **sandbox_overrides: Any) -> SyncEnv:
        sb, client = make_sandbox(**{"dreamapply_requests_per_minute": 100_000, **sandbox_overrides})
        info = sb.info()
        for name, conn in airflow_connections(info, requests_per_minute=100_000).items():
            monkeypatch.setenv(name, json.dumps(conn))
        ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
        run_root = tmp_path / "runs"
        monkeypatch.setenv("D365_SYNC_LEDGER_URL", ledger_url)
        monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(run_root))
        if settings is not None:
            monkeypatch.setenv("D365_SYNC_SETTINGS", str(settings))
        return SyncEnv(sb, client, ledger_url, run_root)

    yield make
