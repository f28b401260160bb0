"""Retention of run folders: personal files go after ``personal_days``, whole folders after ``report_days``,
judged by the run's age (its marker), on local disk and on another fsspec store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from d365.pipeline import retention, runfiles
from d365.pipeline.retention import RUN_MARKER, apply_retention, is_report_file, marker, run_started_at
from d365.pipeline.settings import parse_settings
from d365.runtime.runfolder import RunFolder, storage_path

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAG = "dreamapply_to_dynamics365"
# what a sync run writes, by the registry's names (d365.pipeline.runfiles)
PERSONAL = [
    runfiles.EXTRACT_APPLICANTS,
    runfiles.TRANSFORM_LEADS,
    runfiles.TRANSFORM_OUTCOMES,
    runfiles.PLAN_OPERATIONS,
    runfiles.LOAD_RESULTS,
    runfiles.QUALITY_QUARANTINE,
    runfiles.QUALITY_GX_RESULT,
    runfiles.QUALITY_FIELD_ISSUES,
]
REPORTS = [
    runfiles.PREFLIGHT,
    runfiles.EXTRACT_META,
    runfiles.EXTRACT_CATALOG,
    runfiles.PLAN_META,
    runfiles.PLAN_DRY_RUN,
    runfiles.LOAD_STATS,
    runfiles.COMMIT_PRIVACY,
    runfiles.PLAN_PARKED,
    runfiles.COMMIT_PARKED,
    runfiles.LOCK,
    runfiles.LOCK_WAITS,
    runfiles.REPORT,
    runfiles.TIMINGS,
    runfiles.QUALITY_SUMMARY,
    runfiles.QUALITY_SUMMARY_JSON,
]


def make_run(root: str, run_id: str, started: datetime) -> RunFolder:
    folder = RunFolder.for_run(DAG, run_id, root=root)
    folder.write_json(RUN_MARKER, marker(DAG, run_id, now=started))
    for name in PERSONAL + REPORTS:
        with folder.file(name).open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"applicant_id": 7, "email": "ada@example.org"}) if name in PERSONAL else "{}")
    return folder


def names(folder: RunFolder) -> set[str]:
    if not folder.path.exists():
        return set()
    return {str(p.relative_to(folder.path)) for p in folder.path.rglob("*") if p.is_file()}


def test_every_file_of_a_run_is_classified_and_unknown_files_count_as_personal() -> None:
    assert all(is_report_file(n) for n in [*REPORTS, RUN_MARKER])
    assert not any(is_report_file(n) for n in PERSONAL)
    assert not is_report_file("extract/something_new.jsonl")


def test_personal_files_go_after_personal_days_reports_after_report_days(tmp_path: Path) -> None:
    root = "file://" + str(tmp_path / "runs")
    fresh = make_run(root, "manual__fresh", NOW - timedelta(days=13, hours=23))
    old = make_run(root, "scheduled__old", NOW - timedelta(days=14, hours=1))
    ancient = make_run(root, "scheduled__ancient", NOW - timedelta(days=401))

    result = apply_retention(storage_path(root), personal_days=14, report_days=400, now=NOW)

    assert names(fresh) == {*PERSONAL, *REPORTS, RUN_MARKER}
    assert names(old) == {*REPORTS, RUN_MARKER}  # reports stay
    assert names(ancient) == set() and not ancient.path.exists()
    assert not (old.path / "transform").exists()  # emptied sub-folders are removed too
    assert result.to_json() | {"deleted": None, "trimmed": None} == {
        "checked": 3,
        "folders_deleted": 1,
        "folders_trimmed": 1,
        "files_deleted": len(PERSONAL),
        "deleted": None,
        "trimmed": None,
        "undated": [],
    }
    assert result.folders_deleted == [f"{DAG}/scheduled__ancient"]
    # a second sweep finds nothing more to do
    again = apply_retention(storage_path(root), personal_days=14, report_days=400, now=NOW)
    assert (again.files_deleted, again.folders_deleted) == (0, [])


def test_the_run_age_comes_from_the_marker_not_from_file_times(tmp_path: Path) -> None:
    """A scrub rewrites old files (fresh mtime): the old run still expires. Old file times do not expire a
    young run."""
    root = "file://" + str(tmp_path / "runs")
    old = make_run(root, "old_but_scrubbed", NOW - timedelta(days=20))
    young = make_run(root, "young_with_old_files", NOW - timedelta(days=1))
    stale = (NOW - timedelta(days=500)).timestamp()
    for p in Path(young.path.path).rglob("*"):
        os.utime(p, (stale, stale))
    fresh = NOW.timestamp()
    for p in Path(old.path.path).rglob("*"):
        os.utime(p, (fresh, fresh))

    apply_retention(storage_path(root), personal_days=14, report_days=400, now=NOW)

    assert names(old) == {*REPORTS, RUN_MARKER}
    assert names(young) == {*PERSONAL, *REPORTS, RUN_MARKER}


def test_a_folder_without_marker_is_dated_by_its_oldest_file(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / DAG / "legacy"
    (runs / "extract").mkdir(parents=True)
    (runs / "preflight.json").write_text("{}")
    (runs / "extract" / "applicants.jsonl").write_text('{"applicant_id": 1}\n')
    old = time.time() - 30 * 86400
    os.utime(runs / "preflight.json", (old, old))  # the scrub refreshed the extract, not the preflight
    folder = RunFolder("file://" + str(runs))
    started = run_started_at(folder.path)
    assert started is not None and abs(started.timestamp() - old) < 2

    apply_retention(storage_path("file://" + str(tmp_path / "runs")), personal_days=14, report_days=400)
    assert names(folder) == {"preflight.json"}


def test_a_run_folder_for_a_new_run_gets_its_marker_once(tmp_path: Path) -> None:
    root = "file://" + str(tmp_path / "runs")
    first = RunFolder.for_run(DAG, "manual__1", root=root)
    created = first.read_json(RUN_MARKER)["created_at"]
    assert abs(datetime.fromisoformat(created).timestamp() - time.time()) < 5
    again = RunFolder.for_run(DAG, "manual__1", root=root)  # a later task of the same run
    assert again.read_json(RUN_MARKER)["created_at"] == created


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A non-local fsspec store behind ``ObjectStoragePath`` (what ``s3://`` is in production)."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    attach("memory", fs=fs)
    yield "memory://bucket/d365_runs"
    fs.rm("/bucket", recursive=True)


def test_retention_works_through_object_storage(memory_root: str) -> None:
    old = make_run(memory_root, "scheduled__old", NOW - timedelta(days=15))
    ancient = make_run(memory_root, "scheduled__ancient", NOW - timedelta(days=500))
    young = make_run(memory_root, "scheduled__young", NOW - timedelta(days=2))
    assert old.path.protocol == "memory"

    result = apply_retention(storage_path(memory_root), personal_days=14, report_days=400, now=NOW)

    assert names(old) == {*REPORTS, RUN_MARKER}
    assert not ancient.path.exists()
    assert names(young) == {*PERSONAL, *REPORTS, RUN_MARKER}
    assert (result.files_deleted, len(result.folders_deleted)) == (len(PERSONAL), 1)


def test_retention_settings_defaults_and_checks() -> None:
    def parse(section: dict[str, Any]) -> Any:
        return parse_settings({"data_mapping": {"lastname": {"source": "applicant.name.family"}}, **section})

    s = parse({})
    assert (s.retention.personal_days, s.retention.report_days) == (14, 400)
    assert parse({"retention": {"personal_days": 7, "report_days": 30}}).retention.personal_days == 7
    for bad in ({"personal_days": 0}, {"personal_days": True}, {"personal_days": 30, "report_days": 10}):
        with pytest.raises(ValueError, match="retention"):
            parse({"retention": bad})
    with pytest.raises(ValueError, match="report_days"):
        apply_retention(storage_path("file:///nonexistent"), personal_days=10, report_days=5)
    assert {runfiles.REPORT, runfiles.QUALITY_SUMMARY} <= retention.REPORT_FILES


def test_every_run_file_the_sync_names_is_classified_here() -> None:
    """Every run file is declared once in ``d365.pipeline.runfiles`` with whether it holds personal data, and
    retention's report files are exactly the declared ones without: a module that names a run file of its own
    (a constant not from the registry) fails here, so nobody forgets to decide how long it is kept."""
    import importlib

    modules = [
        importlib.import_module(name)
        for name in (
            "d365.pipeline.triage",
            "d365.pipeline.report",
            "d365.operators.load_leads",
            *(f"d365.tasks.{task}" for task in ("context", "preflight", "lock", "extract", "transform", "plan")),
            *(f"d365.tasks.{task}" for task in ("commit", "report")),
        )
    ]
    declared = {
        value
        for module in modules
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value.endswith((".json", ".jsonl", ".md"))
    }
    assert declared - set(runfiles.REGISTRY) == set()
    assert set(PERSONAL) == runfiles.PERSONAL_FILES
    assert {*REPORTS, RUN_MARKER, runfiles.RECONCILE_REPORT, runfiles.RETENTION_REPORT} == runfiles.REPORT_FILES
    assert retention.REPORT_FILES is runfiles.REPORT_FILES
    assert not set(PERSONAL) & retention.REPORT_FILES


def test_the_docs_list_exactly_the_report_files_kept_until_report_days() -> None:
    """docs/settings.md (``retention.report_days``) names every file kept past ``personal_days``, and no other."""
    import re

    docs = (Path(__file__).resolve().parents[3] / "docs" / "settings.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if line.startswith("| `report_days` |"))
    named = {name for name in re.findall(r"`([\w/.]+\.(?:json|jsonl|md))`", row)}
    assert named == set(runfiles.REPORT_FILES)
