"""Large data moves between tasks as files in a per-run folder; XCom carries only the folder's path.

This module holds the folder's layout and file formats, over any ``StoragePath`` (the part of ``pathlib``'s
interface that Airflow's ``ObjectStoragePath`` shares), so the pipeline reads and writes run files without
knowing where they live. The runtime opens folders on ``ObjectStoragePath`` (``d365.runtime.runfolder``:
local disk by default, any fsspec store such as ``s3://bucket/prefix`` in production). Records are JSON Lines:
nested applicant data survives unchanged, and files stream line by line instead of loading whole frames.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

RUN_ROOT_ENV = "D365_SYNC_RUN_ROOT"


class StoragePath(Protocol):
    """A file or folder of the run store: what run folders, retention and the erasure scrub use of a path."""

    @property
    def name(self) -> str: ...

    @property
    def parent(self) -> Any: ...

    def __truediv__(self, other: str) -> Any: ...

    def exists(self) -> bool: ...

    def is_file(self) -> bool: ...

    def is_dir(self) -> bool: ...

    def mkdir(self, parents: bool = ..., exist_ok: bool = ...) -> None: ...

    def open(self, mode: str = ..., encoding: str | None = ...) -> IO[Any]: ...

    def iterdir(self) -> Iterable[Any]: ...

    def rglob(self, pattern: str) -> Iterable[Any]: ...

    def unlink(self) -> None: ...

    def rmdir(self, recursive: bool = ...) -> None: ...

    def relative_to(self, other: Any) -> Any: ...

    def stat(self) -> Any: ...


def default_run_root() -> str:
    """``$D365_SYNC_RUN_ROOT``, else ``file://$AIRFLOW_HOME/d365_runs`` (``~/airflow`` like Airflow itself)."""
    root = os.environ.get(RUN_ROOT_ENV)
    if root:
        return root
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return "file://" + str(Path(home).resolve() / "d365_runs")


def safe_part(part: str) -> str:
    """A DAG or run id as one folder name (run ids hold ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", part)


def run_folder_url(root: str, dag_id: str, run_id: str) -> str:
    """Where a run's folder lives under a run root: ``<root>/<dag id>/<run id>``."""
    return f"{root.rstrip('/')}/{safe_part(dag_id)}/{safe_part(run_id)}"


class RunFiles:
    """The files of one run's folder at ``path`` (``url`` names it in reports and notes); kept per
    ``d365.pipeline.retention``."""

    def __init__(self, path: StoragePath, url: str | None = None) -> None:
        self.path = path
        self.url = (url or str(path)).rstrip("/")

    def file(self, name: str) -> Any:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self, name: str) -> bool:
        return bool((self.path / name).exists())

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
