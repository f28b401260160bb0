"""Shared fixtures: a running sandbox over verified TLS (in-process, ephemeral ports)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Airflow reads its configuration when first imported: point it at a private home before any test does,
# so the tests never touch a developer's own ~/airflow.
_REPO = Path(__file__).resolve().parents[1]
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="d365-tests-airflow-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(_REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("D365_SYNC_TASK_RETRIES", "0")

from sandbox import Sandbox, SandboxConfig  # noqa: E402
from sandbox.client import SandboxClient  # noqa: E402


def _config(tmp: Path, **overrides: object) -> SandboxConfig:
    base = {
        "login_port": 0,
        "dataverse_port": 0,
        "dreamapply_port": 0,
        "admin_port": 0,
        "state_dir": tmp,
        "applicants": 300,
        "seed": 7,
    }
    base.update(overrides)
    return SandboxConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One shared sandbox for read-mostly tests. Tests that change limits or data use ``make_sandbox``."""
    sb = Sandbox(_config(tmp_path_factory.mktemp("sandbox"))).start()
    yield sb
    sb.stop()


@pytest.fixture
def sandbox_client(sandbox: Sandbox) -> Iterator[SandboxClient]:
    client = SandboxClient(sandbox.info())
    yield client
    client.clear_faults()


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[..., tuple[Sandbox, SandboxClient]]]:
    """A private sandbox with config overrides, stopped after the test."""
    started: list[Sandbox] = []

    def make(**overrides: object) -> tuple[Sandbox, SandboxClient]:
        sb = Sandbox(_config(tmp_path / f"sb{len(started)}", **overrides)).start()
        started.append(sb)
        return sb, SandboxClient(sb.info())

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def refuse_first_scrub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run store refuses the first scrub of a JSON Lines file (an ``OSError``), then works again: a commit
    that fails after the load. Returns the paths the refusal hit (assert it fired)."""
    from d365.pipeline import privacy

    real = privacy._scrub_jsonl
    fired: list[str] = []

    def refuse_once(path: object, *args: object) -> int:
        if not fired:
            fired.append(str(path))
            raise OSError("the run store refused the write")
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(privacy, "_scrub_jsonl", refuse_once)
    return fired


PG_ADMIN_URL = os.environ.get("D365_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (127.0.0.1:5432, trust auth) for one test, dropped afterwards: the first runs
    on a new production ledger."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"d365_fresh_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
