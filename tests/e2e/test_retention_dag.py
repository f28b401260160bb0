"""Retention in the nightly DAG on the folders a real sync wrote: a run older than ``retention.personal_days``
keeps only its reports (and none of them names a person), one older than ``retention.report_days`` is gone,
a recent one is untouched."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

from e2e.helpers import personal_patterns, raw_applicants
from e2e.test_reconcile_dag import RECONCILE_DAG, run_reconcile

from d365.pipeline.retention import REPORT_FILES, RUN_MARKER

SYNC_DAG = "dreamapply_to_dynamics365"


def files(folder: Any) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def age(folder: Any, days: float) -> None:
    marker = json.loads((folder / RUN_MARKER).read_text())
    marker["created_at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    (folder / RUN_MARKER).write_text(json.dumps(marker))


def test_the_nightly_dag_deletes_personal_files_then_whole_run_folders(sync_env: Any) -> None:
    env = sync_env(applicants=30)
    assert env.run().state == "success"
    (synced,) = list((env.run_root / SYNC_DAG).iterdir())
    written = files(synced)
    assert {"extract/applicants.jsonl", "plan/operations.jsonl", "report.json", RUN_MARKER} <= written
    old = synced.parent / "scheduled__old"
    ancient = synced.parent / "scheduled__ancient"
    recent = synced.parent / "scheduled__recent"
    for copy in (old, ancient, recent):
        shutil.copytree(synced, copy)
    shutil.rmtree(synced)
    age(old, 15)  # past personal_days (14), files touched just now: the marker decides
    age(ancient, 401)  # past report_days (400)
    age(recent, 13)

    run, _report = run_reconcile(env)
    assert run.state == "success"

    assert files(recent) == written
    assert not ancient.exists()
    kept = files(old)
    assert kept == {name for name in written if name in REPORT_FILES}
    assert {"report.json", "quality/summary.md", "extract/meta.json"} <= kept
    assert not {"extract/applicants.jsonl", "transform/leads.jsonl", "load/results.jsonl"} & kept
    raw = raw_applicants(env.client)
    leaks = [
        (aid, field, name)
        for aid, field, pattern in personal_patterns(raw)
        for name in kept
        if pattern.search((old / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert not leaks, leaks[:10]
    sweep = json.loads(next((env.run_root / RECONCILE_DAG).glob("*/retention.json")).read_text())
    assert sweep["deleted"] == [f"{SYNC_DAG}/scheduled__ancient"] and sweep["trimmed"] == [f"{SYNC_DAG}/scheduled__old"]
    assert sweep["files_deleted"] == len(written) - len(kept)
