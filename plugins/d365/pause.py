"""Automatic pause, like DreamApply's own gateway: repeated irrecoverable failures stop further loads.

Irrecoverable: a failed preflight (``PreflightError``: authentication refused, a missing or disabled owner,
a revoked key, a mapping that does not fit) and authentication errors anywhere (``DynamicsAuthError``,
``DreamApplyAuthError``). Recoverable failures (a bad record, a 400 on one lead, a 5xx, throttling, the
network) are never recorded. More than ``pause.max_irrecoverable_failures`` within ``pause.window_minutes``
set the paused flag; while it is set, preflight refuses to run. State lives in the ledger database
(``d365_sync_failures``, ``d365_sync_pause``).

Operations::

    python -m d365.pause status      # paused or not, why, and the failures in the window
    python -m d365.pause resume      # clear the flag and the recorded failures; the next run goes ahead
    python -m d365.pause pause --reason "CRM maintenance"
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from d365.errors import IntegrationPaused, PreflightError
from d365.hooks.errors import DreamApplyAuthError, DynamicsAuthError
from d365.notifications import redact, send_mail
from d365.pipeline.ledger import default_ledger_url
from d365.pipeline.ledger_schema import create_tables

log = logging.getLogger(__name__)

RESUME_COMMAND = "python -m d365.pause resume"

_metadata = sa.MetaData()
failures_table = sa.Table(
    "d365_sync_failures",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
)
pause_table = sa.Table(
    "d365_sync_pause",
    _metadata,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("since", sa.DateTime(timezone=True), nullable=True),
)
_ROW = "integration"


def is_irrecoverable(exc: BaseException | None) -> bool:
    """True for failures a retry cannot fix: configuration and authentication (see the module docstring)."""
    if exc is None:
        return False
    return isinstance(exc, (DynamicsAuthError, DreamApplyAuthError, PreflightError))


def failure_kind(exc: BaseException) -> str:
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None and is_irrecoverable(cause) else type(exc).__name__


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str | None = None
    since: datetime | None = None

    def message(self) -> str:
        since = self.since.strftime("%Y-%m-%d %H:%M UTC") if self.since else "unknown time"
        return (
            f"the integration is paused since {since}: {self.reason or 'no reason recorded'}. Nothing is extracted "
            f"or written until it is resumed: fix the cause, then run `{RESUME_COMMAND}` "
            "(see README, 'Alerts and automatic pause')"
        )


class PauseStore:
    """The failures table and the paused flag, in the ledger database."""

    def __init__(self, url: str | None = None) -> None:
        self.engine = sa.create_engine(url or default_ledger_url(), future=True, pool_pre_ping=True)
        create_tables(self.engine, _metadata)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> PauseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def state(self) -> PauseState:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(pause_table).where(pause_table.c.name == _ROW)).mappings().first()
        if not row or not row["paused"]:
            return PauseState(False)
        since = row["since"]
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return PauseState(True, row["reason"], since)

    def record_failure(self, kind: str, detail: str | None = None, *, run_id: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                failures_table.insert().values(at=_now(), kind=kind[:100], detail=(detail or "")[:2000], run_id=run_id)
            )

    def failures_since(self, since: datetime) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(failures_table).where(failures_table.c.at >= since).order_by(failures_table.c.at)
            ).mappings()
            return [dict(r) for r in rows]

    def pause(self, reason: str) -> bool:
        """Set the flag; True only when it was not set before (the caller alerts once)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(pause_table.c.paused).where(pause_table.c.name == _ROW)).first()
            if row is not None and row[0]:
                return False
            values = {"paused": True, "reason": reason, "since": _now()}
            if row is None:
                conn.execute(pause_table.insert().values(name=_ROW, **values))
            else:
                conn.execute(pause_table.update().where(pause_table.c.name == _ROW).values(**values))
            return True

    def resume(self) -> PauseState:
        """Clear the flag and the recorded failures (they led to the pause); returns the state before."""
        before = self.state()
        with self.engine.begin() as conn:
            conn.execute(pause_table.delete().where(pause_table.c.name == _ROW))
            conn.execute(failures_table.delete())
        return before

    def check_threshold(self, max_failures: int, window_minutes: int) -> str | None:
        """A reason to pause when more than ``max_failures`` fall in the window, else None."""
        recent = self.failures_since(_now() - timedelta(minutes=window_minutes))
        if len(recent) <= max_failures:
            return None
        kinds: dict[str, int] = {}
        for r in recent:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        shown = ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        last = recent[-1].get("detail") or ""
        return (
            f"{len(recent)} irrecoverable failures within {window_minutes} minutes "
            f"(more than {max_failures}: {shown}); last: {last[:500]}"
        )


def record_irrecoverable(
    exc: BaseException, *, settings: Any, ledger_url: str | None = None, run_id: str | None = None
) -> bool:
    """Record one irrecoverable failure; pause (and alert the technical contact once) past the threshold.
    Returns True when this call paused the integration. Recoverable failures are ignored."""
    if not is_irrecoverable(exc):
        return False
    detail = redact(str(exc), settings)
    with PauseStore(ledger_url) as store:
        store.record_failure(failure_kind(exc), detail, run_id=run_id)
        if not settings.pause.enabled:
            return False
        reason = store.check_threshold(settings.pause.max_irrecoverable_failures, settings.pause.window_minutes)
        if reason is None or not store.pause(reason):
            return False
        state = store.state()
    send_mail(
        settings,
        subject="[d365 sync] integration PAUSED after repeated irrecoverable failures",
        body=(
            f"The DreamApply → Dynamics 365 integration paused itself: {reason}\n\n"
            "Further runs stop at preflight; nothing is extracted or written.\n\n"
            "How to resume: fix the cause (connection secret, DreamApply API key, contact owner, mapping), then "
            f"run `{RESUME_COMMAND}` on a host with the ledger's D365_SYNC_LEDGER_URL and trigger the DAG.\n"
            f"Paused since: {state.since}\n"
        ),
    )
    return True


@contextmanager
def preflight_guard(settings: Any, ledger_url: str | None = None, run_id: str | None = None) -> Iterator[None]:
    """Around preflight: refuse to run while paused (``IntegrationPaused``, a clear message); record an
    irrecoverable failure of the body (and pause past the threshold) before it propagates."""
    with PauseStore(ledger_url) as store:
        state = store.state()
    if state.paused:
        raise IntegrationPaused(f"preflight refused: {state.message()}")
    try:
        yield
    except Exception as exc:
        if is_irrecoverable(exc):
            try:
                record_irrecoverable(exc, settings=settings, ledger_url=ledger_url, run_id=run_id)
            except Exception as err:  # the original error is what matters
                log.warning("could not record the failure for the automatic pause: %s", err)
        raise


def _now() -> datetime:
    return datetime.now(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d365.pause", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger-url", help="ledger database (default: D365_SYNC_LEDGER_URL or $AIRFLOW_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="paused or not, and the failures of the last window")
    sub.add_parser("resume", help="clear the paused flag and the recorded failures")
    p = sub.add_parser("pause", help="pause by hand")
    p.add_argument("--reason", default="paused by hand")
    args = parser.parse_args(argv)
    with PauseStore(args.ledger_url) as store:
        if args.command == "resume":
            before = store.resume()
            print("resumed (was paused: %s)" % (before.reason if before.paused else "no"))
        elif args.command == "pause":
            store.pause(args.reason)
            print(store.state().message())
        else:
            state = store.state()
            print(state.message() if state.paused else "not paused")
            recent = store.failures_since(_now() - timedelta(hours=1))
            print(f"irrecoverable failures in the last hour: {len(recent)}")
            for r in recent[-10:]:
                print(f"  {r['at']}  {r['kind']}  {(r['detail'] or '')[:200]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
