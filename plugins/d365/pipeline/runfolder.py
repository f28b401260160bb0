"""Large data moves between tasks as files in a per-run folder; XCom carries only the folder's path.

The folder is an Airflow ``ObjectStoragePath`` (local disk by default, any fsspec store such as
``s3://bucket/prefix`` in production). Records are JSON Lines: nested applicant data survives
unchanged, and files stream line by line instead of loading whole frames into memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RUN_ROOT_ENV = "D365_SYNC_RUN_ROOT"


def default_run_root() -> str:
    """``$D365_SYNC_RUN_ROOT``, else ``file://$AIRFLOW_HOME/d365_runs`` (``~/airflow`` like Airflow itself)."""
    root = os.environ.get(RUN_ROOT_ENV)
    if root:
        return root
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return "file://" + str(Path(home).resolve() / "d365_runs")


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", part)


class RunFolder:
    """One run's folder (``<run root>/<dag id>/<run id>``); kept per ``retention`` (``d365.pipeline.retention``)."""

    def __init__(self, url: str) -> None:
        from airflow.sdk import ObjectStoragePath  # imported lazily: keeps DAG parsing cheap

        self.url = url.rstrip("/")
        self.path = ObjectStoragePath(self.url)

    @classmethod
    def for_run(cls, dag_id: str, run_id: str, root: str | None = None) -> RunFolder:
        """The run's folder, created with its ``run.json`` marker on first use: retention dates the run by the
        marker, not by file times that an erasure's scrub refreshes (``d365.pipeline.retention``)."""
        from d365.pipeline.retention import RUN_MARKER, marker

        folder = cls(f"{(root or default_run_root()).rstrip('/')}/{_safe(dag_id)}/{_safe(run_id)}")
        folder.path.mkdir(parents=True, exist_ok=True)
        if not folder.exists(RUN_MARKER):
            folder.write_json(RUN_MARKER, marker(dag_id, run_id))
        return folder

    def file(self, name: str) -> Any:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def write_json(self, name: str, data: Any) -> str:
        target = self.file(name)
        with target.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        return str(target)

    def read_json(self, name: str, default: Any = None) -> Any:
        target = self.path / name
        if not target.exists():
            return default
        with target.open("r", encoding="utf-8") as fh:
            return json.load(fh)

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> int:
        return self._jsonl(name, rows, "w")

    def append_jsonl(self, name: str, rows: Iterable[Any]) -> int:
        """Add rows (a retried task appends; readers let the last row of a key win)."""
        return self._jsonl(name, rows, "a")

    def _jsonl(self, name: str, rows: Iterable[Any], mode: str) -> int:
        count = 0
        with self.file(name).open(mode, encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str))
                fh.write("\n")
                count += 1
        return count

    def read_jsonl(self, name: str) -> Iterator[Any]:
        target = self.path / name
        if not target.exists():
            return
        with target.open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
