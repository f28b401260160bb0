"""One sync at a time per DreamApply instance: a lease in the ledger database (``d365_sync_lock``).

Scheduled runs, manual sends, dry runs and backfill runs all take the lease before the extract reads the
cursors and keep it until the commit has moved them. Tasks run in separate processes (on Celery, on separate
hosts), so no session-level lock could span extract → commit: the lease is a row holding the run id, a
generation and an expiry, taken with one atomic conditional upsert (``Ledger.acquire_lock``).

- A run that finds the lease held waits (the DAG's ``lock`` sensor, in reschedule mode: no worker slot is used
  while waiting) and goes ahead once the holder has committed; after ``D365_SYNC_LOCK_WAIT_SECONDS`` it fails
  naming the holder run.
- Every step renews the lease (``hold``) and stops if the run lost it; the ledger ignores writes of an older
  generation, so a run that lost its lease can never put an older payload over a newer one.
- The commit releases the lease; so do the report (dry runs, failed runs), the watcher and, for a run that
  failed without reaching them (killed by ``dagrun_timeout``), the DAG's ``on_failure_callback``.
- A lease expires ``ttl`` after its last renewal (the DAG run timeout), so a dead run cannot block for ever;
  an operator can free it at once::

      python -m d365.pipeline.lock status
      python -m d365.pipeline.lock release --instance 127.0.0.1:8445
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from d365.pipeline.ledger import Lease, Ledger, LockLost, default_ledger_url

TTL_ENV = "D365_SYNC_LOCK_TTL_SECONDS"
WAIT_ENV = "D365_SYNC_LOCK_WAIT_SECONDS"
POKE_ENV = "D365_SYNC_LOCK_POKE_SECONDS"
DEFAULT_TTL_SECONDS = 6 * 3600.0  # used when the DAG has no dagrun_timeout
DEFAULT_WAIT_SECONDS = 3600.0
DEFAULT_POKE_SECONDS = 30.0
RELEASE_COMMAND = "python -m d365.pipeline.lock release --instance"
log = logging.getLogger(__name__)
__all__ = [
    "LockLost",
    "acquire",
    "describe",
    "hold",
    "poke_seconds",
    "release",
    "release_on_run_failure",
    "ttl_seconds",
    "wait_seconds",
]


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${env} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"${env} must be a positive number of seconds, got {raw!r}")
    return value


def ttl_seconds(dagrun_timeout_seconds: float | None = None) -> float:
    """How long a lease lives after its last renewal: ``$D365_SYNC_LOCK_TTL_SECONDS``, else the DAG run
    timeout (a run cannot outlive it), else 6 hours."""
    return _seconds(TTL_ENV, dagrun_timeout_seconds or DEFAULT_TTL_SECONDS)


def wait_seconds() -> float:
    """How long a run waits for a held lease before it fails (``$D365_SYNC_LOCK_WAIT_SECONDS``, 1 hour)."""
    return _seconds(WAIT_ENV, DEFAULT_WAIT_SECONDS)


def poke_seconds() -> float:
    """How often a waiting run asks again (``$D365_SYNC_LOCK_POKE_SECONDS``, 30 s)."""
    return _seconds(POKE_ENV, DEFAULT_POKE_SECONDS)


def describe(lease: Lease) -> str:
    """The holder as an operator needs it: run id, generation, since when, until when."""
    if lease.run_id is None:
        return f"nobody (generation {lease.generation})"
    return (
        f"run {lease.run_id} (generation {lease.generation}, taken {_iso(lease.acquired_ms)}, "
        f"expires {_iso(lease.expires_ms)})"
    )


def acquire(ledger_url: str, instance: str, run_id: str, *, ttl: float) -> Lease:
    """Try once; ``held`` on the result says whether this run has the lease now."""
    ledger = Ledger(ledger_url)
    try:
        return ledger.acquire_lock(instance, run_id, ttl_seconds=ttl)
    finally:
        ledger.dispose()


def hold(ledger: Ledger, instance: str, run_id: str, *, generation: int | None, ttl: float, step: str) -> Lease:
    """Renew this run's lease before ``step`` reads or writes; raise ``LockLost`` if another run has it now."""
    lease = ledger.renew_lock(instance, run_id, ttl_seconds=ttl, generation=generation)
    if not lease.held:
        raise LockLost(
            f"{step}: run {run_id} no longer holds the sync lock of DreamApply instance {instance} "
            f"(lock generation {generation}; now held by {describe(lease)}); stopping before it reads or writes "
            "anything more. The ledger ignores this run's older writes; the next run replays its window."
        )
    return lease


def release(ledger_url: str, instance: str | None, run_id: str) -> int:
    """Free the lease ``run_id`` holds (none held: 0). Safe to call from any task, any number of times."""
    ledger = Ledger(ledger_url)
    try:
        return ledger.release_lock(instance, run_id)
    finally:
        ledger.dispose()


def release_on_run_failure(context: Any) -> None:
    """DAG-level ``on_failure_callback``: a run that failed without reaching its report or watcher (killed by
    ``dagrun_timeout``, its tasks marked failed from the UI) frees its lock now instead of at expiry."""
    run_id = context["dag_run"].run_id
    if release(default_ledger_url(), None, run_id):
        log.warning("sync lock of failed run %s released", run_id)


def busy_message(instance: str, lease: Lease, waited: float) -> str:
    return (
        f"another sync of DreamApply instance {instance} holds the lock: {describe(lease)}; waited {waited:.0f} s, "
        f"nothing was read or written. If that run is dead: {RELEASE_COMMAND} {instance} "
        f"(the lock also expires by itself at {_iso(lease.expires_ms)})."
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# -- operator's command ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d365.pipeline.lock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger-url", default=None, help="SQLAlchemy URL (default: $D365_SYNC_LEDGER_URL)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="which run holds each instance's lock, and until when")
    rel = sub.add_parser("release", help="free an instance's lock whoever holds it (a run known to be dead)")
    rel.add_argument("--instance", required=True, help="the DreamApply instance key, e.g. apply.example.edu")
    args = parser.parse_args(argv)
    ledger = Ledger(args.ledger_url or default_ledger_url())
    try:
        if args.command == "status":
            leases = ledger.locks()
            if not leases:
                print("no sync has taken a lock yet")
            for lease in leases:
                state = "free" if lease.run_id is None else ("expired" if lease.expired() else "held")
                print(f"{lease.instance}: {state}; {describe(lease)}")
            return 0
        holder = ledger.clear_lock(args.instance)
        print(f"{args.instance}: released the lock of run {holder}" if holder else f"{args.instance}: lock was free")
        return 0
    finally:
        ledger.dispose()


if __name__ == "__main__":  # pragma: no cover - exercised through main()
    sys.exit(main())
