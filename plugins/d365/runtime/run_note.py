"""Put the run summary on the DAG run's note, where data engineers look first.

Airflow 3 gives task code no Execution-API call for notes and blocks direct ORM access in task
processes, so this tries, in order:

1. the public REST API (``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}``) when an Airflow connection
   ``airflow_api`` exists (host = api-server base URL; login/password for a token from ``/auth/token``,
   or an ``extra`` ``{"token": "..."}``) — the production path;
2. the metadata database through the ORM, which works where the task runs in the same process as Airflow
   (``airflow dags test`` / ``dag.test()``);
3. otherwise it logs that the note could not be set; the same text is always in the task log and in the
   run folder's ``report.json``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
API_CONN_ID = "airflow_api"
NOTE_LIMIT = 1000  # Airflow's dag run note column


def set_run_note(dag_id: str, run_id: str, text: str) -> str:
    """Returns how the note was set: ``api``, ``orm`` or ``none``."""
    note = text if len(text) <= NOTE_LIMIT else text[: NOTE_LIMIT - 1] + "…"
    try:
        if _via_api(dag_id, run_id, note):
            return "api"
    except Exception as exc:  # an optional path: never fail the run for a note
        log.warning("could not set the run note through the REST API: %s", exc)
    try:
        if _via_orm(dag_id, run_id, note):
            return "orm"
    except Exception as exc:
        log.info("no direct metadata-DB access for the run note here (%s)", type(exc).__name__)
    log.warning("run note not set (configure the '%s' connection); the summary is in the task log", API_CONN_ID)
    return "none"


def _via_api(dag_id: str, run_id: str, note: str) -> bool:
    from airflow.sdk import Connection

    try:
        conn = Connection.get(API_CONN_ID)
    except Exception:
        return False
    import requests

    base = (conn.host or "").rstrip("/")
    if not base.startswith("http"):
        base = f"http://{base}" + (f":{conn.port}" if conn.port else "")
    extra: dict[str, Any] = conn.extra_dejson or {}
    verify = extra.get("ca_bundle", True)
    token = extra.get("token")
    if not token:
        r = requests.post(
            f"{base}/auth/token", json={"username": conn.login, "password": conn.password}, timeout=30, verify=verify
        )
        r.raise_for_status()
        token = r.json()["access_token"]
    r = requests.patch(
        f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
        params={"update_mask": "note"},
        json={"note": note},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        verify=verify,
    )
    r.raise_for_status()
    return True


def _via_orm(dag_id: str, run_id: str, note: str) -> bool:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one_or_none()
        if dag_run is None:
            return False
        dag_run.note = note
    return True
