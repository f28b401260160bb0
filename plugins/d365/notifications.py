"""Mails to the technical contact (``send_mail``, through ``SmtpHook``): the per-run digest of record-level
failures and the automatic-pause alert. Task failure alerts (``d365.runtime.alerts.FailureAlert``, an
``SmtpNotifier``) use the same sender, recipient and ``redact``.

Everything goes through the Airflow SMTP connection ``alerts.smtp_conn_id`` (default ``smtp_default``) to
``technical_contact``; no contact (or ``alerts.enabled: false``): nothing is sent. Every subject and body
passes ``redact``, which removes the passwords and secrets of the sync's connections whatever the text.
A mail that cannot be sent is logged, never raised: an alert must not fail the task it reports on.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

log = logging.getLogger(__name__)

DEFAULT_FROM = "d365-sync@localhost"
REDACTED = "***"
_SECRET_EXTRA = re.compile(r"secret|password|passwd|token|key|credential", re.IGNORECASE)
_NOT_SECRET_EXTRA = {"ca_bundle", "key_file", "cert_file"}
# Tokens and keys that look like credentials even when no connection names them.
_PATTERNS = (
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:client_secret|password|api[_-]?key|access_token|refresh_token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"
    ),
)


def _connection_secrets(conn_ids: Iterable[str]) -> list[str]:
    from airflow.sdk import BaseHook

    found: list[str] = []
    for conn_id in conn_ids:
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception:  # a missing connection has no secret to hide
            continue
        if conn.password:
            found.append(str(conn.password))
        try:
            extra = conn.extra_dejson or {}
        except Exception:
            extra = {}
        for key, value in extra.items():
            if key not in _NOT_SECRET_EXTRA and _SECRET_EXTRA.search(key) and isinstance(value, str) and value:
                found.append(value)
    return found


def secrets_of(settings: Any) -> list[str]:
    """The passwords and secret extras of the Dynamics, DreamApply and SMTP connections of ``settings``."""
    ids = [settings.dynamics.connection_id, settings.dreamapply.connection_id, settings.alerts.smtp_conn_id]
    return _connection_secrets(dict.fromkeys(ids))


def redact(text: str | None, settings: Any = None, *, secrets: Iterable[str] = ()) -> str:
    """``text`` without any connection secret (also URL-encoded) and without bearer tokens or ``key=value``
    credentials."""
    out = str(text or "")
    values = [*secrets, *(secrets_of(settings) if settings is not None else [])]
    for value in sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True):
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            out = out.replace(form, REDACTED)
    for pattern in _PATTERNS:
        out = pattern.sub(lambda m: m.group(1) + (" " if m.group(1).lower() == "bearer" else "") + REDACTED, out)
    return out


def html_body(body: str) -> str:
    """A plain text as the HTML body of a mail (monospace, escaped): tables of ids stay aligned."""
    return '<pre style="font-family: monospace">' + html.escape(body, quote=False) + "</pre>"


def from_address(settings: Any) -> str:
    """``alerts.from_email``, else the SMTP connection's ``from_email`` extra, else ``DEFAULT_FROM``."""
    if settings.alerts.from_email:
        return settings.alerts.from_email
    from airflow.sdk import BaseHook

    try:
        conn_from = BaseHook.get_connection(settings.alerts.smtp_conn_id).extra_dejson.get("from_email")
    except Exception:
        conn_from = None
    return conn_from or DEFAULT_FROM


_SAID_MISSING: set[str] = set()  # SMTP connection ids already reported missing by this process (task)


def mail_ready(settings: Any) -> bool:
    """Whether a mail to ``technical_contact`` can go out: a contact, alerts on, and the SMTP connection
    exists. A missing connection is said once per task, plainly (not as the SMTP hook's "not found" error on
    every mail); no contact or alerts off is not a fault and says nothing here."""
    if not settings.technical_contact or not settings.alerts.enabled:
        return False
    from airflow.sdk import BaseHook

    conn_id = settings.alerts.smtp_conn_id
    try:
        BaseHook.get_connection(conn_id)
    except Exception:
        if conn_id not in _SAID_MISSING:
            _SAID_MISSING.add(conn_id)
            log.warning(
                "alerts: technical_contact is set but the Airflow SMTP connection %r does not exist, so no alert or "
                "digest mail is sent; create it (README: Alerts and automatic pause) or set alerts.enabled: false",
                conn_id,
            )
        return False
    return True


def send_mail(settings: Any, *, subject: str, body: str) -> bool:
    """Send one plain message to ``technical_contact`` (redacted); False when skipped or it failed."""
    to = settings.technical_contact
    if not to or not settings.alerts.enabled:
        log.info("no technical contact (or alerts disabled): mail %r not sent", subject)
        return False
    if not mail_ready(settings):
        return False
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    subject, body = redact(subject, settings), redact(body, settings)
    try:
        with SmtpHook(smtp_conn_id=settings.alerts.smtp_conn_id) as hook:
            hook.send_email_smtp(
                to=to, from_email=from_address(settings), subject=subject, html_content=html_body(body)
            )
    except Exception as exc:  # an alert never fails the task
        log.warning("could not send %r to the technical contact: %s", subject, redact(str(exc), settings))
        return False
    log.info("mail %r sent to the technical contact", subject)
    return True
