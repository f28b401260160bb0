"""``python -m d365 check``: the sync's preflight against the configured connections and settings, without a sync.

Runs exactly what the DAG's preflight task checks (``tasks.preflight._preflight``: token and WhoAmI, the mapping
against the live lead metadata, every application user of the credential pool, the contact owner and the owner
rules' owners, the DreamApply connection, the bulk messages the org offers) on a run context over a temporary
folder that is deleted afterwards. No lock is taken, the ledger is not opened, nothing is extracted or written,
and the automatic pause is neither consulted nor fed (``python -m d365.pause status`` shows it). Exits 0 when
preflight passes, else 1 with its error (connection secrets redacted).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from d365.cli_common import logs_to_stderr

COMMAND = "python -m d365 check"
DAG_ID = "d365_check"


def run_check(settings: Any) -> dict[str, Any]:
    """Preflight on a throwaway run folder; returns what it recorded (``preflight.json``), the folder removed."""
    from d365.pipeline.runfiles import PREFLIGHT
    from d365.tasks.context import RunContext
    from d365.tasks.preflight import _preflight

    run_id = "check__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="d365-check-") as tmp:
        rc = RunContext.create(DAG_ID, run_id, {}, run_folder="file://" + str(Path(tmp) / "run"), settings=settings)
        _preflight(rc)
        return rc.folder.read_json(PREFLIGHT) or {}


def describe(doc: Mapping[str, Any], settings: Any) -> list[str]:
    """What preflight checked, one line each (ids, names and counts; no personal data, no secret)."""
    target = doc.get("target") or {}
    users = doc.get("application_users") or []
    owners = doc.get("owners") or {}
    rules = owners.get("rules") or []
    bulk = target.get("bulk_messages") or []
    key = settings.dynamics.alternate_key
    lines = [
        f"Dynamics 365 connection {target.get('connection_id')}: token and WhoAmI ok (caller {doc.get('caller_id')})",
        f"lead table {target.get('entity')} (entity set {target.get('entity_set')}): "
        f"{len(settings.data_mapping)} mapped columns fit its metadata",
    ]
    lines += [
        f"application user {u['connection_id']} (client {u['client_id']}): enabled, roles {', '.join(u['roles'])}"
        for u in users
    ]
    if key:
        lines.append(f"alternate key {key}: {doc.get('alternate_key_status')}")
    if owners.get("default"):
        lines.append(f"contact_owner: systemuser {owners['default']} can own leads")
    if rules:
        lines.append(f"owner_rules: {len(rules)} owners can own leads")
    lines.append(f"bulk messages on {target.get('entity')}: {', '.join(bulk) or 'none used (every write as $batch)'}")
    lines.append(f"DreamApply connection {settings.dreamapply.connection_id}: instance {doc.get('instance')}, ping ok")
    return lines


def main(argv: list[str] | None = None) -> int:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from d365.errors import PreflightError, PreflightUnavailable
    from d365.hooks.errors import ApiError
    from d365.notifications import redact
    from d365.pipeline.settings import SettingsError, load_settings, settings_path

    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", help="settings file (default: $D365_SYNC_SETTINGS or the repository's)")
    args = parser.parse_args(argv)

    try:
        path = settings_path(args.settings)
        settings = load_settings(path)
    except SettingsError as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return 1
    print(f"settings: {path}")
    try:
        with logs_to_stderr():
            doc = run_check(settings)
    except (PreflightError, PreflightUnavailable, ApiError, AirflowNotFoundException) as exc:
        print(f"check failed: {redact(str(exc), settings)}", file=sys.stderr)
        return 1
    print("check ok: preflight passed (nothing extracted, nothing written)")
    for line in describe(doc, settings):
        print(f"  {line}")
    print("not read: the automatic pause (python -m d365.pause status)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
