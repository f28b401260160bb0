"""Run folders on Airflow's ``ObjectStoragePath``: local disk by default, any fsspec store (``s3://bucket/prefix``)
in production. The layout and file formats are the pipeline's (``d365.pipeline.runfolder``)."""

from __future__ import annotations

from typing import Any

from d365.pipeline.retention import RUN_MARKER, marker
from d365.pipeline.runfolder import RUN_ROOT_ENV, RunFiles, default_run_root, run_folder_url

__all__ = ["RUN_ROOT_ENV", "RunFolder", "default_run_root", "storage_path"]


def storage_path(url: str) -> Any:
    """An ``ObjectStoragePath`` for ``url`` (a ``StoragePath``: what retention and the erasure scrub walk)."""
    from airflow.sdk import ObjectStoragePath  # imported lazily: keeps DAG parsing cheap

    return ObjectStoragePath(url.rstrip("/"))


class RunFolder(RunFiles):
    """One run's folder (``<run root>/<dag id>/<run id>``) at a URL."""

    def __init__(self, url: str) -> None:
        super().__init__(storage_path(url), url)

    @classmethod
    def for_run(cls, dag_id: str, run_id: str, root: str | None = None) -> RunFolder:
        """The run's folder, created with its ``run.json`` marker on first use: retention dates the run by the
        marker, not by file times that an erasure's scrub refreshes (``d365.pipeline.retention``)."""
        folder = cls(run_folder_url(root or default_run_root(), dag_id, run_id))
        folder.path.mkdir(parents=True, exist_ok=True)
        if not folder.exists(RUN_MARKER):
            folder.write_json(RUN_MARKER, marker(dag_id, run_id))
        return folder
