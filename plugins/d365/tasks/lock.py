"""The lock task: take the DreamApply instance's sync lock before anything reads the cursors."""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.runfiles import (
    LOCK,
    LOCK_WAITS,
)
from d365.tasks.context import RunContext

log = logging.getLogger(__name__)


def lock_step(rc: RunContext, *, dagrun_timeout: float | None = None) -> dict[str, Any] | None:
    """Take the DreamApply instance's sync lock (``d365.pipeline.lock``) before anything reads the cursors.
    Returns the lease (also in ``lock.json``), or None while another run holds it (the DAG's sensor asks again
    later); after ``D365_SYNC_LOCK_WAIT_SECONDS`` of waiting the task fails naming the holder."""
    from d365.pipeline import lock

    instance = rc.instance
    ttl = lock.ttl_seconds(dagrun_timeout)
    lease = lock.acquire(rc.ledger_url, instance, rc.run_id, ttl=ttl)
    waits = list(rc.folder.read_jsonl(LOCK_WAITS))
    now = time.time()
    waited = now - float(waits[0]["at"]) if waits else 0.0
    if lease.held:
        doc = {
            "instance": instance,
            "generation": lease.generation,
            "ttl_seconds": ttl,
            "acquired_at": lease.acquired_at.isoformat(),
            "waited_seconds": round(waited, 3),
            "waited_for": sorted({w["holder"] for w in waits if w.get("holder")}),
        }
        rc.folder.write_json(LOCK, doc)
        log.info("sync lock of %s taken: generation %d (waited %.0f s)", instance, lease.generation, waited)
        return doc
    rc.folder.append_jsonl(LOCK_WAITS, [{"at": now, "holder": lease.run_id, "generation": lease.generation}])
    if waited >= lock.wait_seconds():
        raise AirflowFailException(lock.busy_message(instance, lease, waited))
    log.info("waiting for the sync lock of %s: held by %s", instance, lock.describe(lease))
    return None
