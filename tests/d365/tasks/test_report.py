"""The report task (``d365.tasks.report``) over a temp run folder: counts from the run's files, failures with
their codes, durations, and a dry run's report from its plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from d365.pipeline.plan import CREATE, Operation
from d365.pipeline.runfiles import (
    EXTRACT_META,
    LOAD_RESULTS,
    LOAD_STATS,
    PLAN_DRY_RUN,
    PLAN_OPERATIONS,
    QUALITY_GX_RESULT,
    QUALITY_SUMMARY,
    QUALITY_SUMMARY_JSON,
    REPORT,
    TIMINGS,
    TRANSFORM_OUTCOMES,
)
from d365.pipeline.settings import load_settings
from d365.tasks.context import RunContext
from d365.tasks.report import report_step


@pytest.fixture(autouse=True)
def no_airflow_note(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    notes: list[str] = []
    monkeypatch.setattr("d365.tasks.report.set_run_note", lambda dag_id, run_id, text: notes.append(text) or "test")
    return notes


def run(tmp_path: Path, params: dict[str, object] | None = None) -> RunContext:
    return RunContext.create(
        "dag", "r1", params, run_folder="file://" + str(tmp_path / "run"), settings=load_settings(), ledger_url="x"
    )


def test_the_report_counts_the_runs_files(tmp_path: Path, no_airflow_note: list[str]) -> None:
    rc = run(tmp_path)
    rc.folder.write_json(EXTRACT_META, {"counts": {"total": 4}})
    rc.folder.write_jsonl(
        TRANSFORM_OUTCOMES,
        [
            {"applicant_id": 3, "state": "quarantined", "reason": "email: invalid syntax"},
            {"applicant_id": 4, "state": "failed", "reason": "picklist: could not be added"},
        ],
    )
    ops = [Operation(1, CREATE, "L1", "h1", {}), Operation(2, CREATE, "L2", "h2", {})]
    rc.folder.write_jsonl(PLAN_OPERATIONS, [op.to_json() for op in ops])
    rc.folder.write_jsonl(LOAD_RESULTS, [{"applicant_id": 1, "outcome": "created"}])  # 2 never reached
    rc.folder.write_json(LOAD_STATS, {"elapsed_seconds": 1.5})
    rc.folder.write_jsonl(TIMINGS, [{"step": "extract", "started": 0, "seconds": 0.25}])

    outcomes = report_step(rc)
    assert outcomes["created"] == 1 and outcomes["quarantined"] == 1 and outcomes["failed"] >= 1
    report = rc.folder.read_json(REPORT)
    assert report["durations_seconds"] == {"extract": 0.25, "load": 1.5}
    codes = {(f["applicant_id"], f["error_code"]) for f in report["failures"]}
    assert {(2, "not_loaded"), (4, "before_load")} <= codes
    assert len(no_airflow_note) == 1 and "created: 1" in no_airflow_note[0]  # the run note: the same summary


def test_a_dry_run_reports_its_plan(tmp_path: Path) -> None:
    rc = run(tmp_path, {"dry_run": True})
    rc.folder.write_json(PLAN_DRY_RUN, {"dry_run": True, "counts": {"create": 2}})
    assert report_step(rc) == {"dry_run": True, "create": 2}
    assert rc.folder.read_json(REPORT)["outcomes"] == {}


def test_the_summary_is_logged_once_with_short_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once in the log (no print beside it: Airflow puts both in the task log); run files relative to the run
    folder, whose location is said once."""
    import logging

    rc = run(tmp_path)
    base = rc.folder.url.rstrip("/")
    files = {"summary": f"{base}/{QUALITY_SUMMARY}", "gx_result": f"{base}/{QUALITY_GX_RESULT}"}
    rc.folder.write_json(QUALITY_SUMMARY_JSON, {"ok": True, "invalid_rows": 0, "files": files})
    with caplog.at_level(logging.INFO, logger="d365.tasks.report"):
        report_step(rc)
    lines = [r.getMessage() for r in caplog.records if r.name == "d365.tasks.report"]
    assert capsys.readouterr().out == ""
    assert sum(line.startswith("DreamApply → Dynamics 365") for line in lines) == 1
    quality = [line for line in lines if line.startswith("quality:")]
    assert quality == [f"quality: 0 quarantined, see {QUALITY_SUMMARY} (GX result: {QUALITY_GX_RESULT})"]
    assert [line for line in lines if "file://" in line] == [f"run folder: {base}/"]
