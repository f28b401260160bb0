"""Fixtures for the Dynamics 365 hook tests: connections set through the environment, as Airflow reads them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from d365.hooks.dynamics import DynamicsHook
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

CONN_ENV = "AIRFLOW_CONN_DYNAMICS365_DEFAULT"


def connection_json(info: dict[str, Any], **overrides: Any) -> str:
    """The AIRFLOW_CONN_* JSON for a sandbox; ``extra_<name>`` overrides set extras, others top-level fields."""
    conn: dict[str, Any] = airflow_connections(info)["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    for key, value in overrides.items():
        if key.startswith("extra_"):
            conn["extra"][key[len("extra_") :]] = value
        else:
            conn[key] = value
    return json.dumps(conn)


@pytest.fixture
def make_dynamics_hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., DynamicsHook]]:
    """``make_dynamics_hook(info, **connection overrides, hook_kwargs={...})``: a hook on a fresh env connection."""
    hooks: list[DynamicsHook] = []

    def make(info: dict[str, Any], *, hook_kwargs: dict[str, Any] | None = None, **overrides: Any) -> DynamicsHook:
        monkeypatch.setenv(CONN_ENV, connection_json(info, **overrides))
        hook = DynamicsHook(**(hook_kwargs or {}))
        hook.backoff_base = 0.05  # keep transient-fault retries fast in tests
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


@pytest.fixture
def dynamics_hook(sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]) -> DynamicsHook:
    """A hook on the shared sandbox (read-mostly tests; writes use unique applicant ids)."""
    return make_dynamics_hook(sandbox.info())


@pytest.fixture
def dynamics_private(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], make_dynamics_hook: Callable[..., DynamicsHook]
) -> Callable[..., tuple[DynamicsHook, SandboxClient]]:
    """A hook on a private sandbox, for tests that inject faults or expire tokens."""

    def make(hook_kwargs: dict[str, Any] | None = None, **sandbox_overrides: Any) -> tuple[DynamicsHook, SandboxClient]:
        sandbox_overrides.setdefault("applicants", 10)
        sb, client = make_sandbox(**sandbox_overrides)
        return make_dynamics_hook(sb.info(), hook_kwargs=hook_kwargs), client

    return make


@pytest.fixture
def dynamics_uid() -> str:
    """A short unique marker so tests on the shared sandbox never collide."""
    return uuid.uuid4().hex[:10]
