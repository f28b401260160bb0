"""Run files without Airflow: the pipeline reads and writes them over any ``StoragePath`` (here ``pathlib``), and
every pipeline module imports in a process where Airflow cannot be imported at all."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import d365.pipeline
from d365.pipeline.runfolder import RunFiles, run_folder_url, safe_part

BLOCK_AIRFLOW = """
import importlib.abc, sys

class NoAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"the pipeline imported {name}")
        return None

sys.meta_path.insert(0, NoAirflow())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1, sorted(m for m in sys.modules if m.split(".")[0] == "airflow"))
"""


def test_every_pipeline_module_imports_without_airflow() -> None:
    names = [f"d365.pipeline.{m.name}" for m in pkgutil.iter_modules(d365.pipeline.__path__)]
    assert {"d365.pipeline.runfolder", "d365.pipeline.privacy", "d365.pipeline.retention"} <= set(names)
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_AIRFLOW, *names], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"imported {len(names)} []"


def test_the_probe_fails_on_an_airflow_import() -> None:
    """The blocking finder above does stop an Airflow import (so the test before it can fail)."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_AIRFLOW, "airflow.sdk"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0 and "the pipeline imported airflow" in done.stderr


def test_run_files_over_a_plain_path(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "run")
    assert files.url == str(tmp_path / "run")
    assert files.read_json("missing.json", default={"none": True}) == {"none": True}
    assert list(files.read_jsonl("missing.jsonl")) == []
    written = files.write_json("plan/meta.json", {"b": 1, "a": "é"})
    assert Path(written) == tmp_path / "run" / "plan" / "meta.json"
    assert files.exists("plan/meta.json") and not files.exists("plan/other.json")
    assert json.loads(Path(written).read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    assert files.write_jsonl("load/results.jsonl", [{"applicant_id": 1}, {"applicant_id": 2}]) == 2
    assert files.append_jsonl("load/results.jsonl", [{"applicant_id": 1, "outcome": "updated"}]) == 1
    assert list(files.read_jsonl("load/results.jsonl")) == [
        {"applicant_id": 1},
        {"applicant_id": 2},
        {"applicant_id": 1, "outcome": "updated"},
    ]


def test_a_run_folder_url_is_one_folder_per_dag_and_run() -> None:
    run_id = "scheduled__2026-11-27T10:00:00+00:00"
    assert safe_part(run_id) == "scheduled__2026-11-27T10_00_00_00_00"
    assert run_folder_url("file:///runs/", "dag", run_id) == f"file:///runs/dag/{safe_part(run_id)}"
