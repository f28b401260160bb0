"""The runtime's run folders: the pipeline's ``RunFiles`` on Airflow's ``ObjectStoragePath``, local or any fsspec
store, and the same store walked by the pipeline's erasure scrub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from d365.pipeline.privacy import scrub_run_files
from d365.pipeline.retention import RUN_MARKER
from d365.runtime.runfolder import RunFolder, default_run_root, storage_path


@pytest.fixture
def memory_root() -> Iterator[str]:
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    attach("memory", fs=fs)
    yield "memory://bucket/d365_runs"
    fs.rm("/bucket", recursive=True)


def test_a_run_folder_lives_at_its_url_with_its_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))
    assert default_run_root() == "file://" + str(tmp_path / "runs")
    folder = RunFolder.for_run("dreamapply_to_dynamics365", "manual__2026-11-27T10:00:00+00:00")
    assert folder.url == "file://" + str(tmp_path / "runs/dreamapply_to_dynamics365/manual__2026-11-27T10_00_00_00_00")
    marker = json.loads(
        (tmp_path / "runs/dreamapply_to_dynamics365/manual__2026-11-27T10_00_00_00_00" / RUN_MARKER).read_text()
    )
    assert marker["run_id"] == "manual__2026-11-27T10:00:00+00:00"
    folder.write_jsonl("extract/applicants.jsonl", [{"applicant_id": 1}])
    assert list(RunFolder(folder.url).read_jsonl("extract/applicants.jsonl")) == [{"applicant_id": 1}]


def test_the_scrub_walks_an_object_store(memory_root: str) -> None:
    folder = RunFolder.for_run("dag", "run1", root=memory_root)
    assert folder.path.protocol == "memory"
    folder.write_jsonl(
        "extract/applicants.jsonl", [{"applicant_id": 7, "email": "erin.erased@example.org"}, {"applicant_id": 8}]
    )
    folder.write_json("quality/result.json", {"note": "first failing value: erin.erased@example.org"})

    assert scrub_run_files(storage_path(memory_root), [7]) == 2

    assert list(folder.read_jsonl("extract/applicants.jsonl")) == [{"applicant_id": 8}]
    assert folder.read_json("quality/result.json") == {"note": "first failing value: [erased]"}
