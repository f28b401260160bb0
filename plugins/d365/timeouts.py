"""How long a task and a DAG run may take: nothing in a sync runs unbounded.

A hung request, a server that keeps answering ``Retry-After``, a paging loop: each has its own bound in the
hooks, but a task as a whole still needs one, and so does a run (``max_active_runs=1``: a run that never ends
would block every later one). Every task gets ``execution_timeout`` (``D365_SYNC_TASK_TIMEOUT_MINUTES``,
default 180) and every DAG a ``dagrun_timeout`` (``D365_SYNC_DAGRUN_TIMEOUT_MINUTES``, default 360). The
defaults leave room for a first load of a large instance under Dataverse's service-protection budgets; the
sync lock's lease lives as long as the run may (``d365.pipeline.lock``).
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

TASK_TIMEOUT_ENV = "D365_SYNC_TASK_TIMEOUT_MINUTES"
DAGRUN_TIMEOUT_ENV = "D365_SYNC_DAGRUN_TIMEOUT_MINUTES"
DEFAULT_TASK_TIMEOUT_MINUTES = 180.0
DEFAULT_DAGRUN_TIMEOUT_MINUTES = 360.0


def _minutes(name: str, default: float) -> timedelta:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return timedelta(minutes=default)
    try:
        minutes = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of minutes, got {raw!r}") from None
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"{name} must be a positive, finite number of minutes, got {raw!r}")
    return timedelta(minutes=minutes)


def task_timeout() -> timedelta:
    """``execution_timeout`` of every task of the sync and reconciliation DAGs."""
    return _minutes(TASK_TIMEOUT_ENV, DEFAULT_TASK_TIMEOUT_MINUTES)


def dagrun_timeout() -> timedelta:
    """``dagrun_timeout`` of the sync and reconciliation DAGs."""
    return _minutes(DAGRUN_TIMEOUT_ENV, DEFAULT_DAGRUN_TIMEOUT_MINUTES)
