"""A private sandbox wired in as the Airflow connections, and a run context over a temp run folder and a SQLite
ledger: the task bodies run as the DAG runs them, over real HTTPS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from d365.pipeline.settings import load_settings
from d365.tasks.context import RunContext
from sandbox.client import airflow_connections


@pytest.fixture
def connected(make_sandbox: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox with 4 applicants; every Airflow connection the sync uses points at it. Returns its client."""
    sb, client = make_sandbox(applicants=4)
    for name, conn in airflow_connections(sb.info()).items():
        monkeypatch.setenv(name, conn if isinstance(conn, str) else json.dumps(conn))
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))
    return client


@pytest.fixture
def run_context(tmp_path: Path) -> Callable[..., RunContext]:
    def make(run_id: str = "manual__r1", params: dict[str, Any] | None = None) -> RunContext:
        return RunContext.create(
            "dreamapply_to_dynamics365",
            run_id,
            params,
            settings=load_settings(),
            ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        )

    return make
