"""Mails to the technical contact: task failure alerts (``FailureAlert``, an ``SmtpNotifier``), the per-run
digest of record-level failures and the automatic-pause alert (``send_mail``, through ``SmtpHook``).

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

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

log = logging.getLogger(__name__)

DEFAULT_FROM = "d365-sync@localhost"
WATCHER = "watcher"  # the DAG's task that fails the run when another task failed
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


def _html(body: str) -> str:
    return '<pre style="font-family: monospace">' + html.escape(body, quote=False) + "</pre>"


def _from_email(settings: Any) -> str:
    """``alerts.from_email``, else the SMTP connection's ``from_email`` extra, else ``DEFAULT_FROM``."""
    if settings.alerts.from_email:
        return settings.alerts.from_email
    from airflow.sdk import BaseHook

    try:
        conn_from = BaseHook.get_connection(settings.alerts.smtp_conn_id).extra_dejson.get("from_email")
    except Exception:
        conn_from = None
    return conn_from or DEFAULT_FROM


def send_mail(settings: Any, *, subject: str, body: str) -> bool:
    """Send one plain message to ``technical_contact`` (redacted); False when skipped or it failed."""
    to = settings.technical_contact
    if not to or not settings.alerts.enabled:
        log.info("no technical contact (or alerts disabled): mail %r not sent", subject)
        return False
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    subject, body = redact(subject, settings), redact(body, settings)
    try:
        with SmtpHook(smtp_conn_id=settings.alerts.smtp_conn_id) as hook:
            hook.send_email_smtp(to=to, from_email=_from_email(settings), subject=subject, html_content=_html(body))
    except Exception as exc:  # an alert never fails the task
        log.warning("could not send %r to the technical contact: %s", subject, redact(str(exc), settings))
        return False
    log.info("mail %r sent to the technical contact", subject)
    return True


def _run_link(ti: Any) -> str:
    try:
        url = ti.log_url
        if url:
            return str(url)
    except Exception:
        pass
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")
    return f"{base}/dags/{getattr(ti, 'dag_id', '')}/runs/{getattr(ti, 'run_id', '')}"


def failure_message(context: Any, settings: Any) -> tuple[str, str]:
    """(subject, body) of a task failure alert: what failed, the error, the run link, how to retry."""
    ti = context["ti"]
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", "?")
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception recorded (see the task log)"
    from d365.pause import RESUME_COMMAND, is_irrecoverable

    kind = (
        "irrecoverable (configuration or authentication: a retry cannot fix it; it counts towards the automatic pause)"
        if is_irrecoverable(exc)
        else "possibly transient or record-level"
    )
    subject = f"[d365 sync] task failed: {dag_id}.{task_id} (run {run_id})"
    body = "\n".join(
        [
            "A task of the DreamApply → Dynamics 365 sync failed.",
            "",
            f"DAG:     {dag_id}",
            f"Task:    {task_id} (try {getattr(ti, 'try_number', '?')})",
            f"Run:     {run_id}",
            f"Log:     {_run_link(ti)}",
            f"Kind:    {kind}",
            "",
            "Error:",
            f"  {error}",
            "",
            "What failed: the run stopped at this task; the report task still writes report.json and the run note.",
            "Nothing after a failed preflight or transform was written to Dynamics; a failed load replays the same",
            "window next run (deterministic lead ids make that harmless).",
            "",
            "How to retry:",
            f"  - fix the cause, then clear the task in the Airflow UI (Grid → {task_id} → Clear) or",
            f"    `airflow tasks clear {dag_id} -t '^{task_id}$'`;",
            f"  - or re-trigger the DAG: `airflow dags trigger {dag_id}` (params: full_resync, applicant_ids,",
            "    e.g. --conf '{\"applicant_ids\": [123, 456]}').",
            f"  - if the integration paused itself, resume first: `{RESUME_COMMAND}`.",
        ]
    )
    return subject, body


class FailureAlert(SmtpNotifier):
    """``on_failure_callback`` of the sync's tasks: one mail per failed task to ``technical_contact``
    (not for the watcher, which repeats another task's failure, nor for a run refused while paused).

    The recipient, sender, subject and body are filled at failure time from the settings file; no
    technical contact → nothing is sent. An authentication error of a task other than preflight (which
    records its own) also counts towards the automatic pause."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(to=[], **kwargs)

    def notify(self, context: Any) -> None:
        try:
            from d365.pipeline.settings import load_settings

            settings = load_settings()
        except Exception as exc:  # the settings may be what failed
            log.warning("failure alert not sent: settings could not be loaded (%s)", exc)
            return
        ti = context["ti"]
        exc = context.get("exception")
        from d365.pause import IntegrationPaused

        if getattr(ti, "task_id", None) == WATCHER or isinstance(exc, IntegrationPaused):
            # the watcher only repeats another task's failure; a paused integration was alerted once, when it
            # paused, and each refused run must not mail again
            log.info("no alert for %s: %s", getattr(ti, "task_id", "?"), exc)
            return
        if getattr(ti, "task_id", None) != "preflight" and exc is not None:
            try:
                from d365.pause import record_irrecoverable

                record_irrecoverable(exc, settings=settings, run_id=getattr(ti, "run_id", None))
            except Exception as err:
                log.warning("could not record the failure for the automatic pause: %s", err)
        if not settings.technical_contact or not settings.alerts.enabled:
            log.info("task failed; no technical contact configured, no alert sent")
            return
        subject, body = failure_message(context, settings)
        self.to = settings.technical_contact
        self.smtp_conn_id = settings.alerts.smtp_conn_id
        self.subject = redact(subject, settings)
        self.html_content = _html(redact(body, settings))
        self.from_email = _from_email(settings)
        try:
            super().notify(context)
        except Exception as err:  # an alert never fails anything
            log.warning("failure alert could not be sent: %s", redact(str(err), settings))
        else:
            log.info("failure alert sent to the technical contact")
        finally:
            self.__dict__.pop("hook", None)  # a fresh SMTP hook (connection) next time
