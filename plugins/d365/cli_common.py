"""What the ``python -m d365`` commands share: their own output on stdout, everything logged on stderr, and the
secret of a connection to redact from what they print."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def logs_to_stderr() -> Iterator[None]:
    """While the block runs, what the hooks log goes to stderr: Airflow's logging writes to stdout, which holds the
    command's own output (a table, or JSON for a pipe)."""
    outs = {id(sys.stdout), id(sys.__stdout__)}
    moved = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and id(getattr(h, "stream", None)) in outs
    ]
    for handler in moved:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # structlog's loggers write to sys.stdout as it is when made
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def connection_password(conn_id: str) -> list[str]:
    """The connection's secret, to redact (``notifications.redact`` covers the settings' own connections)."""
    from airflow.sdk import BaseHook

    try:
        password = BaseHook.get_connection(conn_id).password
    except Exception:  # a connection that cannot be read has no secret to hide
        return []
    return [str(password)] if password else []
