"""Task failure alerts: the ``on_failure_callback`` of the sync's tasks mails the technical contact what failed,
the error, the log link and how to retry (through the smtp provider's ``SmtpNotifier``, with the sender, recipient
and ``redact`` of ``d365.notifications``), and counts an authentication failure towards the automatic pause
(``d365.pause``)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from d365.errors import IntegrationPaused
from d365.notifications import from_address, html_body, mail_ready, redact
from d365.pause import RESUME_COMMAND, is_irrecoverable, record_irrecoverable

log = logging.getLogger(__name__)

WATCHER = "watcher"  # the DAG's task that fails the run when another task failed


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
        if getattr(ti, "task_id", None) == WATCHER or isinstance(exc, IntegrationPaused):
            # the watcher only repeats another task's failure; a paused integration was alerted once, when it
            # paused, and each refused run must not mail again
            log.info("no alert for %s: %s", getattr(ti, "task_id", "?"), exc)
            return
        if getattr(ti, "task_id", None) != "preflight" and exc is not None:
            try:
                record_irrecoverable(exc, settings=settings, run_id=getattr(ti, "run_id", None))
            except Exception as err:
                log.warning("could not record the failure for the automatic pause: %s", err)
        if not settings.technical_contact or not settings.alerts.enabled:
            log.info("task failed; no technical contact configured, no alert sent")
            return
        if not mail_ready(settings):  # no SMTP connection: said once, plainly (d365.notifications.mail_ready)
            return
        subject, body = failure_message(context, settings)
        self.to = settings.technical_contact
        self.smtp_conn_id = settings.alerts.smtp_conn_id
        self.subject = redact(subject, settings)
        self.html_content = html_body(redact(body, settings))
        self.from_email = from_address(settings)
        try:
            super().notify(context)
        except Exception as err:  # an alert never fails anything
            log.warning("failure alert could not be sent: %s", redact(str(err), settings))
        else:
            log.info("failure alert sent to the technical contact")
        finally:
            self.__dict__.pop("hook", None)  # a fresh SMTP hook (connection) next time
