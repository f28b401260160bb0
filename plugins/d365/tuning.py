"""The load's size knobs, read where the DAG is parsed and where the dry run estimates the load.

``D365_SYNC_BATCH_SIZE`` (operations per ``$batch``, default 100) and ``D365_SYNC_MAX_WORKERS`` (parallel load
workers per application user, default 16, capped by Dynamics' ``x-ms-dop-hint``): one reading, so the estimate
assumes what the load will do.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class LoadTuning(NamedTuple):
    batch_size: int
    max_workers: int


def load_tuning() -> LoadTuning:
    values = []
    for name, default in (("D365_SYNC_BATCH_SIZE", 100), ("D365_SYNC_MAX_WORKERS", 16)):
        raw = os.environ.get(name, "").strip() or str(default)
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
        values.append(value)
    return LoadTuning(*values)
