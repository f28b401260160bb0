"""The run context every task body gets (settings, ledger URL, run folder, params, the sync lock) and the
helpers more than one task uses: ``timed`` (step durations), ``release_lock``, ``_applicant_id``, ``_load_results``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import (
    Ledger,
    default_ledger_url,
)
from d365.pipeline.runfiles import (
    EXTRACT_META,
    LOAD_RESULTS,
    LOCK,
    PREFLIGHT,
    TIMINGS,
)
from d365.pipeline.settings import Settings, load_settings
from d365.runtime.runfolder import RunFolder

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    dag_id: str
    run_id: str
    folder: RunFolder
    settings: Settings
    ledger_url: str
    params: Mapping[str, Any]
    # In the DAG every step after ``lock`` must hold the instance's sync lock; direct callers (tests) may not.
    require_lock: bool = False

    @classmethod
    def create(
        cls,
        dag_id: str,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        run_folder: str | None = None,
        settings: Settings | None = None,
        ledger_url: str | None = None,
        require_lock: bool = False,
    ) -> RunContext:
        folder = RunFolder(run_folder) if run_folder else RunFolder.for_run(dag_id, run_id)
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            folder=folder,
            settings=settings or load_settings(),
            ledger_url=ledger_url or default_ledger_url(),
            params=dict(params or {}),
            require_lock=require_lock,
        )

    @property
    def requested_ids(self) -> list[int]:
        """The applicant IDs of a manual send: ``applicant_ids``, plus those the extract resolved from
        ``tracker_codes`` / ``academic_term_ids`` (``extract/meta.json``)."""
        ids = set(self._param_list("applicant_ids", int))
        if self.tracker_codes or self.academic_term_ids:
            ids.update(int(i) for i in (self.folder.read_json(EXTRACT_META) or {}).get("requested") or [])
        return sorted(ids)

    @property
    def tracker_codes(self) -> list[str]:
        return sorted(set(self._param_list("tracker_codes", str)))

    @property
    def academic_term_ids(self) -> list[int]:
        return sorted(set(self._param_list("academic_term_ids", int)))

    @property
    def dry_run(self) -> bool:
        """Plan and print, write nothing (no picklist options, no load, no commit)."""
        return bool(self.params.get("dry_run"))

    def _param_list(self, name: str, kind: Any) -> list[Any]:
        raw = self.params.get(name) or []
        if isinstance(raw, str | int):
            raw = [part for part in str(raw).replace(",", " ").split() if part]
        return [kind(str(v).strip()) if kind is str else kind(v) for v in raw if str(v).strip()]

    @property
    def full_resync(self) -> bool:
        return bool(self.params.get("full_resync"))

    def preflight(self) -> dict[str, Any]:
        return self.folder.read_json(PREFLIGHT) or {}

    @property
    def instance(self) -> str:
        return self.preflight()["instance"]

    def hold_lock(self, ledger: Ledger, step: str) -> int | None:
        """Renew this run's sync lock before ``step`` reads or writes; its generation versions the step's
        ledger writes. None: no lock was taken (only outside the DAG, ``require_lock`` False)."""
        from d365.pipeline.lock import LockLost, hold

        doc = self.folder.read_json(LOCK)
        if doc is None:
            if self.require_lock:
                raise AirflowFailException(f"{step}: this run did not take the sync lock (the lock task); stopping")
            return None
        try:
            hold(ledger, doc["instance"], self.run_id, generation=doc["generation"], ttl=doc["ttl_seconds"], step=step)
        except LockLost as exc:
            raise AirflowFailException(str(exc)) from None  # a retry cannot get it back
        return int(doc["generation"])

    def lock_fence(self) -> tuple[str, int] | None:
        doc = self.folder.read_json(LOCK)
        return None if doc is None else (self.run_id, int(doc["generation"]))


def release_lock(rc: RunContext) -> int:
    """Free the sync lock this run holds, if any (commit, report, watcher: whichever comes first)."""
    from d365.pipeline.lock import release

    freed = release(rc.ledger_url, None, rc.run_id)
    if freed:
        log.info("sync lock released by run %s", rc.run_id)
    return freed


def _applicant_id(value: Any) -> int | None:
    """An applicant id as int, or None for anything that is not a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()) or None
    return None


def _load_results(rc: RunContext) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for row in rc.folder.read_jsonl(LOAD_RESULTS):
        results[int(row["applicant_id"])] = row  # a retried task appends: the last word counts
    return results


def timed(rc: RunContext, name: str, step: Any) -> Any:
    """Run one step and append its duration to the run folder (the report shows them)."""
    started = time.time()
    try:
        return step(rc)
    finally:
        try:
            rc.folder.append_jsonl(
                TIMINGS, [{"step": name, "started": started, "seconds": round(time.time() - started, 3)}]
            )
        except Exception:  # never fail a step for its bookkeeping
            log.warning("could not record the duration of %s", name)


def dreamapply_instance(hook: Any) -> str:
    """The DreamApply instance key (host) of a ``DreamApplyHook``'s connection: what ledger rows and lead ids
    belong to. One derivation for the sync's preflight and the reconciliation."""
    from d365.pipeline.identity import instance_key

    return instance_key(hook.get_connection(hook.dreamapply_conn_id).host or "")
