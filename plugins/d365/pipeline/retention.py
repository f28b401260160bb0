"""Retention of run folders: personal data is kept only as long as a run may need re-reading. No Airflow here:
the sweep walks a ``StoragePath`` (the runtime gives an ``ObjectStoragePath``, so the same code deletes on local
disk and on S3).

Every run folder (``<run root>/<dag id>/<run id>/``) is judged by the **run's age**: the ``created_at`` its
``run.json`` marker records (written once by ``d365.runtime.runfolder.RunFolder.for_run`` when the run's first
task creates the folder). File modification times are not used for folders with a marker: an erasure's scrub
rewrites files of old runs and would make them look young. A folder without a marker (made before markers
existed, or by hand) is dated by its oldest file's modification time: the scrub rewrites only files holding an
erased applicant, so at least ``preflight.json`` keeps the run's own time.

* older than ``retention.personal_days`` (default 14): every file that may hold personal data is deleted —
  everything **not** in ``REPORT_FILES`` (derived from ``d365.pipeline.runfiles``, where each run file is
  declared once: extracts, transform and plan payloads, load results, quarantine rows,
  the Great Expectations result, any file a later version adds: unknown files count as personal);
* older than ``retention.report_days`` (default 400): the whole folder is deleted, reports included.

``REPORT_FILES`` hold counts, cursors, applicant ids, reasons and settings-derived metadata, never a name,
e-mail address or phone (the privacy e2e test scans them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from d365.pipeline.runfiles import REPORT_FILES, RUN_MARKER
from d365.pipeline.runfolder import StoragePath

log = logging.getLogger(__name__)

# ``RUN_MARKER`` ({"created_at": ISO UTC, "dag_id", "run_id"}) dates the run whatever a scrub rewrites;
# ``REPORT_FILES`` (no personal data: kept until ``report_days``) are derived from the run-file registry.


@dataclass
class RetentionResult:
    """What one sweep did; ``folders_*`` hold ``<dag id>/<run id>`` names (no personal data)."""

    checked: int = 0
    folders_deleted: list[str] = field(default_factory=list)
    folders_trimmed: list[str] = field(default_factory=list)  # personal files deleted, reports kept
    files_deleted: int = 0
    undated: list[str] = field(default_factory=list)  # no marker and no file: left alone

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "folders_deleted": len(self.folders_deleted),
            "folders_trimmed": len(self.folders_trimmed),
            "files_deleted": self.files_deleted,
            "deleted": sorted(self.folders_deleted),
            "trimmed": sorted(self.folders_trimmed),
            "undated": sorted(self.undated),
        }


def marker(dag_id: str, run_id: str, now: datetime | None = None) -> dict[str, str]:
    return {"created_at": (now or datetime.now(UTC)).isoformat(), "dag_id": dag_id, "run_id": run_id}


def is_report_file(relative: str) -> bool:
    return relative.replace("\\", "/").lstrip("/") in REPORT_FILES


def run_started_at(folder: Any) -> datetime | None:
    """The run's start: the marker's ``created_at``; without a usable marker the oldest file's mtime."""
    target = folder / RUN_MARKER
    try:
        if target.exists():
            with target.open("r", encoding="utf-8") as fh:
                created = json.load(fh).get("created_at")
            parsed = datetime.fromisoformat(str(created))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (OSError, ValueError, TypeError, AttributeError):
        log.warning("retention: unreadable run marker in %s: dated by its files", _name(folder))
    times = [t for t in (_mtime(p) for p in _files(folder)) if t is not None]
    return min(times) if times else None


def apply_retention(
    root: StoragePath,
    *,
    personal_days: int,
    report_days: int,
    now: datetime | None = None,
) -> RetentionResult:
    """Sweep every run folder under ``root`` (the run root, e.g. ``d365.runtime.runfolder.storage_path(url)``)
    once."""
    if report_days < personal_days:
        raise ValueError("report_days must be at least personal_days")
    now = now or datetime.now(UTC)
    personal_limit = now - timedelta(days=personal_days)
    report_limit = now - timedelta(days=report_days)
    result = RetentionResult()
    if not root.exists():
        return result
    for dag_dir in sorted((p for p in root.iterdir() if p.is_dir()), key=str):
        for folder in sorted((p for p in dag_dir.iterdir() if p.is_dir()), key=str):
            result.checked += 1
            name = f"{dag_dir.name}/{folder.name}"
            started = run_started_at(folder)
            if started is None:
                result.undated.append(name)
                continue
            if started <= report_limit:
                folder.rmdir(recursive=True)
                result.folders_deleted.append(name)
                continue
            if started <= personal_limit:
                deleted = _delete_personal_files(folder)
                if deleted:
                    result.files_deleted += deleted
                    result.folders_trimmed.append(name)
    log.info(
        "retention: %d run folders checked, %d deleted (older than %d days), %d trimmed of personal files "
        "(older than %d days, %d files)",
        result.checked,
        len(result.folders_deleted),
        report_days,
        len(result.folders_trimmed),
        personal_days,
        result.files_deleted,
    )
    return result


def _delete_personal_files(folder: Any) -> int:
    deleted = 0
    for path in _files(folder):
        if is_report_file(_relative(path, folder)):
            continue
        path.unlink()
        deleted += 1
    # empty sub-folders left behind (local disk; object stores have no empty "folders" to speak of)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
        try:
            if not any(sub.iterdir()):
                sub.rmdir()
        except OSError:
            pass
    return deleted


def _files(folder: Any) -> Iterable[Any]:
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=str)


def _relative(path: Any, folder: Any) -> str:
    return str(path.relative_to(folder)).replace("\\", "/")


def _name(folder: Any) -> str:
    return f"{folder.parent.name}/{folder.name}"


def _mtime(path: Any) -> datetime | None:
    """A file's modification time from fsspec's ``info`` (local: ``mtime``; S3: ``LastModified``...)."""
    try:
        info = path.stat()
    except OSError:
        return None
    value: Any = None
    if isinstance(info, dict):
        value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    else:
        value = getattr(info, "st_mtime", None)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
